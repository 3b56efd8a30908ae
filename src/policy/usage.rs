/// What one model call consumed, as the provider reported it (or as estimated when a stream ended
/// before the provider's usage arrived). Cache fields are disjoint from `input`, so the total
/// counts every token once whatever the provider's own convention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    /// What the call is billed in besides tokens, per its API: images generated without a token
    /// report, characters of text to speech. Priced at the unit price its request resolved.
    pub units: u64,
    /// True when some figure is an estimate rather than the provider's own report.
    pub estimated: bool,
}

impl Usage {
    /// Tokens only: what daily token limits count.
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }
}
