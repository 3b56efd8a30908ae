//! The local guardrail engine: the deterministic part of an Amazon Bedrock guardrail, without
//! AWS. Configured in Bedrock's vocabulary, answering with Bedrock's response type.
//!
//! What it evaluates:
//! - sensitive information: pattern-based PII entity types and custom regexes, each `BLOCK` or
//!   `ANONYMIZE` (masked with Bedrock's placeholders, `{EMAIL}`, `{<regex name>}`);
//! - word policy: denied words and phrases, always `BLOCK`, case-insensitive, whole words.
//!
//! Content filters, denied topics, contextual grounding and PII types that need a model (NAME,
//! ADDRESS, ...) are Bedrock-only; configuring a PII type the engine cannot detect is an error, so
//! a guardrail never silently detects less than its configuration says.
//!
//! Detection choices, biased towards few false positives:
//! - `EMAIL`: ASCII local part and domain with a letters-only TLD (`lodash@4.17.21` is not one).
//! - `PHONE`: North-American numbers (optional `+1`/`1`, area code and exchange not starting with
//!   0/1, separators ` .-`, area code optionally in parentheses) and international `+` numbers
//!   of 8-15 digits (E.164, optionally grouped by ` .-`).
//! - `US_SOCIAL_SECURITY_NUMBER`: `AAA-GG-SSSS` or `AAA GG SSSS` (one separator kind); area not
//!   000/666/9xx, group not 00, serial not 0000. Bare 9-digit numbers are not reported.
//! - `CREDIT_DEBIT_CARD_NUMBER`: 13-19 digits, contiguous or grouped (first group of 4, further
//!   groups of 3-6, separated by single spaces or dashes), first digit not 0, Luhn-valid. The
//!   longest valid span wins, so a CVV after the number does not hide it.
//! - `AWS_ACCESS_KEY`: `AKIA`/`ASIA` + 16 upper-case alphanumerics.
//! - `AWS_SECRET_KEY`: a whole token of exactly 40 characters from `[A-Za-z0-9/+]`, mixing upper
//!   case, lower case and digits, and either within 100 bytes of AWS context (`aws`, `secret`,
//!   `credential`, an access key id) or the entire text. Random 40-character tokens elsewhere
//!   (other vendors' keys, base64 blobs) are not reported; git hashes never are (no upper case).
//! - `IP_ADDRESS`: IPv4 with octets 0-255 and no leading zeros, not part of a longer dotted run
//!   (`1.2.3.4.5` is a version, not an address); IPv6 as `std::net::Ipv6Addr` parses it.
//!
//! All digit/address patterns must stand alone: no letter, digit or `_` right before or after.
//! Every pattern, custom ones included, runs on the `regex` crate: linear time in the text.

use std::cmp::Reverse;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::sync::LazyLock;

use async_trait::async_trait;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{
    ApplyGuardrailResponse, Assessment, CustomWord, FilterAction, Guardrail, GuardrailAction,
    GuardrailError, Output, PiiEntity, RegexFilter, SensitiveInformationPolicyAssessment, Source,
    Usage, WordPolicyAssessment,
};

/// Bedrock's own default blocked messaging.
pub const DEFAULT_BLOCKED_MESSAGE: &str = "Sorry, the model cannot answer this question.";

fn default_blocked_message() -> String {
    DEFAULT_BLOCKED_MESSAGE.to_owned()
}

/// The local guardrail's configuration (TOML-friendly).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalGuardrailConfig {
    /// Replaces a blocked prompt (Bedrock's `blockedInputMessaging`).
    #[serde(default = "default_blocked_message")]
    pub blocked_input_message: String,
    /// Replaces a blocked response (Bedrock's `blockedOutputsMessaging`).
    #[serde(default = "default_blocked_message")]
    pub blocked_output_message: String,
    #[serde(default)]
    pub pii: Vec<PiiEntityConfig>,
    #[serde(default)]
    pub regexes: Vec<RegexConfig>,
    /// Denied words and phrases.
    #[serde(default)]
    pub words: Vec<String>,
}

impl Default for LocalGuardrailConfig {
    fn default() -> Self {
        Self {
            blocked_input_message: default_blocked_message(),
            blocked_output_message: default_blocked_message(),
            pii: Vec::new(),
            regexes: Vec::new(),
            words: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiEntityConfig {
    /// A Bedrock PII entity type: `EMAIL`, `PHONE`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub action: SensitiveAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexConfig {
    /// Names the finding and the placeholder (`{name}`).
    pub name: String,
    pub pattern: String,
    pub action: SensitiveAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SensitiveAction {
    Block,
    Anonymize,
}

impl SensitiveAction {
    fn taken(self) -> FilterAction {
        match self {
            SensitiveAction::Block => FilterAction::Blocked,
            SensitiveAction::Anonymize => FilterAction::Anonymized,
        }
    }
}

/// A configuration the engine refuses, naming the field at fault (`regexes[1].pattern`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guardrail config {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The PII entity types detectable without a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PiiType {
    Email,
    Phone,
    UsSocialSecurityNumber,
    CreditDebitCardNumber,
    AwsAccessKey,
    AwsSecretKey,
    IpAddress,
}

impl PiiType {
    const ALL: [PiiType; 7] = [
        PiiType::Email,
        PiiType::Phone,
        PiiType::UsSocialSecurityNumber,
        PiiType::CreditDebitCardNumber,
        PiiType::AwsAccessKey,
        PiiType::AwsSecretKey,
        PiiType::IpAddress,
    ];

    fn name(self) -> &'static str {
        match self {
            PiiType::Email => "EMAIL",
            PiiType::Phone => "PHONE",
            PiiType::UsSocialSecurityNumber => "US_SOCIAL_SECURITY_NUMBER",
            PiiType::CreditDebitCardNumber => "CREDIT_DEBIT_CARD_NUMBER",
            PiiType::AwsAccessKey => "AWS_ACCESS_KEY",
            PiiType::AwsSecretKey => "AWS_SECRET_KEY",
            PiiType::IpAddress => "IP_ADDRESS",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        if let Some(kind) = Self::ALL.into_iter().find(|kind| kind.name() == name) {
            return Ok(kind);
        }
        let supported = Self::ALL.map(PiiType::name).join(", ");
        Err(match name {
            "NAME" | "ADDRESS" => format!(
                "{name} needs a machine-learning model: only the Bedrock guardrail detects it \
                 (the local engine supports {supported})"
            ),
            _ => format!(
                "PII type {name:?} is not supported by the local engine (supported: {supported}); \
                 use the Bedrock guardrail for other types"
            ),
        })
    }

    /// Byte ranges of every occurrence in `text`.
    fn find(self, text: &str) -> Vec<Range<usize>> {
        match self {
            PiiType::Email => EMAIL.find_iter(text).map(|m| m.range()).collect(),
            PiiType::Phone => [&*NANP_PHONE, &*INTERNATIONAL_PHONE]
                .into_iter()
                .flat_map(|re| standalone_matches(re, text))
                .collect(),
            PiiType::UsSocialSecurityNumber => standalone_matches(&SSN, text)
                .filter(|r| valid_ssn(&text[r.clone()]))
                .collect(),
            PiiType::CreditDebitCardNumber => find_cards(text),
            PiiType::AwsAccessKey => standalone_matches(&AWS_ACCESS_KEY, text).collect(),
            PiiType::AwsSecretKey => find_aws_secret_keys(text),
            PiiType::IpAddress => {
                let mut found: Vec<_> = standalone_matches(&IPV4, text)
                    .filter(|r| {
                        !in_dotted_run(text, r) && text[r.clone()].parse::<Ipv4Addr>().is_ok()
                    })
                    .collect();
                found.extend(find_ipv6(text));
                found
            }
        }
    }
}

fn built_in(pattern: &str) -> Regex {
    Regex::new(pattern).expect("built-in pattern compiles")
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    built_in(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
});
static NANP_PHONE: LazyLock<Regex> = LazyLock::new(|| {
    built_in(r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[ .-]?[2-9][0-9]{2}[ .-]?[0-9]{4}")
});
static INTERNATIONAL_PHONE: LazyLock<Regex> =
    LazyLock::new(|| built_in(r"\+[1-9](?:[ .-]?[0-9]){7,14}"));
static SSN: LazyLock<Regex> = LazyLock::new(|| built_in(r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}"));
/// Digits in groups separated by single spaces or dashes: card number candidates.
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| built_in(r"[0-9]+(?:[ -][0-9]+)*"));
static DIGITS: LazyLock<Regex> = LazyLock::new(|| built_in(r"[0-9]+"));
static AWS_ACCESS_KEY: LazyLock<Regex> = LazyLock::new(|| built_in(r"(?:AKIA|ASIA)[A-Z0-9]{16}"));
/// Maximal runs of base64 and base64url characters: a secret key must be a whole run.
static KEY_TOKEN: LazyLock<Regex> = LazyLock::new(|| built_in(r"[A-Za-z0-9/+_-]+"));
static AWS_CONTEXT: LazyLock<Regex> =
    LazyLock::new(|| built_in(r"(?-u:\b)(?:(?i:aws|secret|credential)|AKIA|ASIA)"));
static IPV4: LazyLock<Regex> = LazyLock::new(|| built_in(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"));
/// Runs of hex digits, colons and dots containing a colon: IPv6 candidates, checked by parsing.
static IPV6_CANDIDATE: LazyLock<Regex> =
    LazyLock::new(|| built_in(r"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"));

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// No letter, digit or `_` directly before or after: `x4111...` or `12345-67-8901` are not matches.
fn standalone(text: &str, range: &Range<usize>) -> bool {
    let before = text[..range.start].chars().next_back();
    let after = text[range.end..].chars().next();
    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
}

fn standalone_matches<'a>(re: &'a Regex, text: &'a str) -> impl Iterator<Item = Range<usize>> + 'a {
    re.find_iter(text)
        .map(|m| m.range())
        .filter(move |r| standalone(text, r))
}

fn valid_ssn(ssn: &str) -> bool {
    // ASCII by construction: AAA?GG?SSSS
    let (area, first_separator, group, second_separator, serial) =
        (&ssn[0..3], &ssn[3..4], &ssn[4..6], &ssn[6..7], &ssn[7..11]);
    first_separator == second_separator
        && area != "000"
        && area != "666"
        && !area.starts_with('9')
        && group != "00"
        && serial != "0000"
}

fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let digit = u32::from(b - b'0');
            match (i % 2 == 1, digit * 2) {
                (true, doubled) if doubled > 9 => doubled - 9,
                (true, doubled) => doubled,
                (false, _) => digit,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn find_cards(text: &str) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    for run in DIGIT_RUN.find_iter(text) {
        let groups: Vec<Range<usize>> = DIGITS
            .find_iter(run.as_str())
            .map(|g| run.start() + g.start()..run.start() + g.end())
            .collect();
        let mut first = 0;
        while first < groups.len() {
            match longest_card(text, &groups[first..]) {
                Some(count) => {
                    found.push(groups[first].start..groups[first + count - 1].end);
                    first += count;
                }
                None => first += 1,
            }
        }
    }
    found
}

/// How many of `groups` (from the first) form the longest plausible, Luhn-valid card number.
fn longest_card(text: &str, groups: &[Range<usize>]) -> Option<usize> {
    let mut digits = String::new();
    let mut longest = None;
    for (i, group) in groups.iter().enumerate() {
        if digits.len() + group.len() > 19 {
            break;
        }
        digits.push_str(&text[group.clone()]);
        // contiguous, or laid out like a card: 4-4-4-4, 4-6-5, 4-4-4-4-3, ...
        let laid_out = i == 0
            || (groups[0].len() == 4 && groups[1..=i].iter().all(|g| (3..=6).contains(&g.len())));
        let span = groups[0].start..group.end;
        if laid_out
            && digits.len() >= 13
            && !digits.starts_with('0')
            && luhn_valid(&digits)
            && standalone(text, &span)
        {
            longest = Some(i + 1);
        }
    }
    longest
}

fn find_aws_secret_keys(text: &str) -> Vec<Range<usize>> {
    const CONTEXT_WINDOW: usize = 100;
    // sorted and disjoint, so the nearest context on each side is a binary search away (a
    // prompt full of "aws" and keys must not cost quadratic time)
    let context: Vec<Range<usize>> = AWS_CONTEXT.find_iter(text).map(|m| m.range()).collect();
    let near_context = |key: &Range<usize>| {
        let before = context.partition_point(|c| c.end <= key.start);
        let after = context.partition_point(|c| c.start < key.end);
        before
            .checked_sub(1)
            .is_some_and(|i| key.start - context[i].end <= CONTEXT_WINDOW)
            || context
                .get(after)
                .is_some_and(|c| c.start - key.end <= CONTEXT_WINDOW)
    };
    let whole_text = text.trim();
    KEY_TOKEN
        .find_iter(text)
        .filter(|token| {
            let key = token.as_str();
            key.len() == 40
                && !key.contains(['_', '-'])
                && key.contains(|c: char| c.is_ascii_uppercase())
                && key.contains(|c: char| c.is_ascii_lowercase())
                && key.contains(|c: char| c.is_ascii_digit())
                && (near_context(&token.range()) || key == whole_text)
        })
        .map(|token| token.range())
        .collect()
}

/// `1.2.3.4` inside `1.2.3.4.5` or `0.1.2.3.4` is a version number or OID, not an address.
fn in_dotted_run(text: &str, range: &Range<usize>) -> bool {
    let before = &text[..range.start];
    let after = &text[range.end..];
    let digit = |c: char| c.is_ascii_digit();
    before.strip_suffix('.').is_some_and(|b| b.ends_with(digit))
        || after
            .strip_prefix('.')
            .is_some_and(|a| a.starts_with(digit))
}

fn find_ipv6(text: &str) -> Vec<Range<usize>> {
    IPV6_CANDIDATE
        .find_iter(text)
        .filter_map(|m| {
            let mut range = m.range();
            // "addr:fe80::1": a single leading colon belongs to the surrounding text
            if m.as_str().starts_with(':') && !m.as_str().starts_with("::") {
                range.start += 1;
            }
            // sentence punctuation after the address: "ping fe80::1."
            while text[range.clone()].ends_with('.') {
                range.end -= 1;
            }
            let trimmed = &text[range.clone()];
            if trimmed.ends_with(':') && !trimmed.ends_with("::") {
                range.end -= 1;
            }
            let candidate = &text[range.clone()];
            let plausible = candidate.matches(':').count() >= 2
                && candidate.contains(|c: char| c.is_ascii_hexdigit())
                && standalone(text, &range)
                && candidate.parse::<Ipv6Addr>().is_ok();
            plausible.then_some(range)
        })
        .collect()
}

/// Builds one case-insensitive alternation of the denied words and phrases. Whole words: `\b`
/// on each side that starts or ends with a word character (so `c++` can still be denied); any
/// run of whitespace inside a phrase matches any other.
fn compile_words(words: &[String]) -> Result<Option<Regex>, ConfigError> {
    let mut alternatives = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let parts: Vec<&str> = word.split_whitespace().collect();
        let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
            return Err(ConfigError::new(format!("words[{i}]"), "must not be empty"));
        };
        let boundary = |c: Option<char>| {
            if c.is_some_and(is_word_char) {
                r"\b"
            } else {
                ""
            }
        };
        let body: Vec<String> = parts.iter().map(|p| regex::escape(p)).collect();
        let alternative = format!(
            "{}{}{}",
            boundary(first.chars().next()),
            body.join(r"\s+"),
            boundary(last.chars().next_back())
        );
        alternatives.push((word.len(), alternative));
    }
    if alternatives.is_empty() {
        return Ok(None);
    }
    // longest first, so "project falcon" is reported rather than a listed "project"
    alternatives.sort_by_key(|(len, _)| Reverse(*len));
    let pattern: Vec<String> = alternatives.into_iter().map(|(_, alt)| alt).collect();
    Regex::new(&format!("(?i)(?:{})", pattern.join("|")))
        .map(Some)
        .map_err(|e| ConfigError::new("words", e.to_string()))
}

/// The last line of a regex error is the reason; the lines above repeat the pattern.
fn regex_error_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    let reason = text
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .unwrap_or(&text);
    reason.to_owned()
}

/// FNV-1a of the configuration: a version that is stable across builds and platforms.
fn fingerprint(config: &LocalGuardrailConfig) -> String {
    let json = serde_json::to_string(config).unwrap_or_default();
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("local-{hash:016x}")
}

/// Bedrock's text unit: up to 1,000 characters of one text block.
fn text_units(text: &str) -> u64 {
    text.chars().count().div_ceil(1000) as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detector {
    Pii(PiiType),
    /// Index into the configured regexes.
    Regex(usize),
}

#[derive(Clone, Debug)]
struct Finding {
    range: Range<usize>,
    detector: Detector,
    action: SensitiveAction,
}

/// A span of text to replace with the placeholder of `detector`.
struct Mask {
    range: Range<usize>,
    detector: Detector,
}

/// Overlapping findings (an email whose local part is a phone number) are masked once: their
/// union gets the placeholder of the longest, the earliest configured on a tie. Only that one is
/// reported, plus any blocking finding in the group, so a BLOCK is never hidden by an ANONYMIZE.
fn resolve_overlaps(mut findings: Vec<Finding>) -> (Vec<Mask>, Vec<Finding>) {
    // a stable sort: detector order (PII types as configured, then regexes) breaks ties
    findings.sort_by_key(|f| (f.range.start, Reverse(f.range.end)));
    let mut masks = Vec::new();
    let mut reported = Vec::new();
    let mut start = 0;
    while start < findings.len() {
        let mut end = start + 1;
        let mut span = findings[start].range.clone();
        while end < findings.len() && findings[end].range.start < span.end {
            span.end = span.end.max(findings[end].range.end);
            end += 1;
        }
        let group = &findings[start..end];
        let (winner, _) = group
            .iter()
            .enumerate()
            .max_by_key(|(i, f)| (f.range.len(), Reverse(*i)))
            .expect("a group has a finding");
        masks.push(Mask {
            range: span,
            detector: group[winner].detector,
        });
        reported.extend(
            group
                .iter()
                .enumerate()
                .filter(|(i, f)| *i == winner || f.action == SensitiveAction::Block)
                .map(|(_, f)| f.clone()),
        );
        start = end;
    }
    (masks, reported)
}

/// The local guardrail. Pure: evaluating is deterministic and does no I/O.
#[derive(Debug)]
pub struct LocalGuardrail {
    config: LocalGuardrailConfig,
    pii: Vec<(PiiType, SensitiveAction)>,
    /// Parallel to `config.regexes`.
    regexes: Vec<Regex>,
    words: Option<Regex>,
    version: String,
}

impl LocalGuardrail {
    pub fn new(config: LocalGuardrailConfig) -> Result<Self, ConfigError> {
        for (field, message) in [
            ("blocked_input_message", &config.blocked_input_message),
            ("blocked_output_message", &config.blocked_output_message),
        ] {
            if message.trim().is_empty() {
                return Err(ConfigError::new(field, "must not be empty"));
            }
        }

        let mut pii: Vec<(PiiType, SensitiveAction)> = Vec::new();
        for (i, entity) in config.pii.iter().enumerate() {
            let field = format!("pii[{i}].type");
            let kind = PiiType::parse(&entity.kind).map_err(|e| ConfigError::new(&field, e))?;
            if pii.iter().any(|(seen, _)| *seen == kind) {
                return Err(ConfigError::new(
                    field,
                    format!("{} is listed twice", entity.kind),
                ));
            }
            pii.push((kind, entity.action));
        }

        let mut regexes = Vec::with_capacity(config.regexes.len());
        for (i, custom) in config.regexes.iter().enumerate() {
            if custom.name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("regexes[{i}].name"),
                    "must not be empty",
                ));
            }
            if config.regexes[..i]
                .iter()
                .any(|other| other.name == custom.name)
            {
                return Err(ConfigError::new(
                    format!("regexes[{i}].name"),
                    format!("regex name {:?} is used twice", custom.name),
                ));
            }
            let field = format!("regexes[{i}].pattern");
            if custom.pattern.is_empty() {
                return Err(ConfigError::new(
                    field,
                    format!("regex {:?}: empty pattern", custom.name),
                ));
            }
            let compiled = Regex::new(&custom.pattern).map_err(|e| {
                ConfigError::new(
                    &field,
                    format!(
                        "regex {:?}: {} (patterns must run in linear time: no look-around, no \
                         backreferences)",
                        custom.name,
                        regex_error_reason(&e)
                    ),
                )
            })?;
            regexes.push(compiled);
        }

        let words = compile_words(&config.words)?;
        let version = fingerprint(&config);
        Ok(Self {
            config,
            pii,
            regexes,
            words,
            version,
        })
    }

    pub fn config(&self) -> &LocalGuardrailConfig {
        &self.config
    }

    /// Evaluates `texts` as Bedrock's ApplyGuardrail would (see the module docs for what is
    /// evaluated and how findings become the response).
    pub fn evaluate(&self, source: Source, texts: &[String]) -> ApplyGuardrailResponse {
        let mut pii_entities = Vec::new();
        let mut regex_filters = Vec::new();
        let mut custom_words = Vec::new();
        let mut blocked = false;
        let mut masked_texts = Vec::with_capacity(texts.len());

        for text in texts {
            let (masks, reported) = resolve_overlaps(self.sensitive_findings(text));
            for finding in reported {
                blocked |= finding.action == SensitiveAction::Block;
                let matched = text[finding.range].to_owned();
                let action = finding.action.taken();
                match finding.detector {
                    Detector::Pii(kind) => pii_entities.push(PiiEntity {
                        kind: kind.name().to_owned(),
                        matched,
                        action,
                        detected: Some(true),
                    }),
                    Detector::Regex(i) => regex_filters.push(RegexFilter {
                        name: self.config.regexes[i].name.clone(),
                        matched,
                        regex: self.config.regexes[i].pattern.clone(),
                        action,
                        detected: Some(true),
                    }),
                }
            }
            masked_texts.push(self.mask(text, &masks));

            if let Some(words) = &self.words {
                for word in words.find_iter(text) {
                    blocked = true;
                    custom_words.push(CustomWord {
                        matched: word.as_str().to_owned(),
                        action: FilterAction::Blocked,
                        detected: Some(true),
                    });
                }
            }
        }

        let sensitive = !pii_entities.is_empty() || !regex_filters.is_empty();
        let intervened = sensitive || !custom_words.is_empty();
        let outputs = if blocked {
            // as Bedrock: one output, the blocked message, whatever the number of texts
            vec![Output {
                text: self.blocked_message(source).to_owned(),
            }]
        } else if intervened {
            masked_texts
                .into_iter()
                .map(|text| Output { text })
                .collect()
        } else {
            Vec::new()
        };
        let assessments = if intervened {
            vec![Assessment {
                sensitive_information_policy: sensitive.then_some(
                    SensitiveInformationPolicyAssessment {
                        pii_entities,
                        regexes: regex_filters,
                    },
                ),
                word_policy: (!custom_words.is_empty()).then(|| WordPolicyAssessment {
                    custom_words,
                    managed_word_lists: Vec::new(),
                }),
                ..Assessment::default()
            }]
        } else {
            Vec::new()
        };

        ApplyGuardrailResponse {
            action: if intervened {
                GuardrailAction::GuardrailIntervened
            } else {
                GuardrailAction::None
            },
            action_reason: None,
            outputs,
            assessments,
            usage: Some(self.usage(texts)),
            guardrail_coverage: None,
        }
    }

    fn blocked_message(&self, source: Source) -> &str {
        match source {
            Source::Input => &self.config.blocked_input_message,
            Source::Output => &self.config.blocked_output_message,
        }
    }

    fn sensitive_findings(&self, text: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        for &(kind, action) in &self.pii {
            findings.extend(kind.find(text).into_iter().map(|range| Finding {
                range,
                detector: Detector::Pii(kind),
                action,
            }));
        }
        for (i, (re, custom)) in self.regexes.iter().zip(&self.config.regexes).enumerate() {
            findings.extend(
                re.find_iter(text)
                    .filter(|m| !m.is_empty()) // `x*` matches nothing worth masking everywhere
                    .map(|m| Finding {
                        range: m.range(),
                        detector: Detector::Regex(i),
                        action: custom.action,
                    }),
            );
        }
        findings
    }

    fn mask(&self, text: &str, masks: &[Mask]) -> String {
        let mut masked = String::with_capacity(text.len());
        let mut copied = 0;
        for mask in masks {
            masked.push_str(&text[copied..mask.range.start]);
            masked.push('{');
            masked.push_str(match mask.detector {
                Detector::Pii(kind) => kind.name(),
                Detector::Regex(i) => self.config.regexes[i].name.as_str(),
            });
            masked.push('}');
            copied = mask.range.end;
        }
        masked.push_str(&text[copied..]);
        masked
    }

    /// Text units per policy type configured. PII is billed by Bedrock; custom regexes count as
    /// `sensitiveInformationPolicyFreeUnits` and words as `wordPolicyUnits`, both free.
    fn usage(&self, texts: &[String]) -> Usage {
        let units: u64 = texts.iter().map(|text| text_units(text)).sum();
        let when = |configured: bool| if configured { units } else { 0 };
        Usage {
            sensitive_information_policy_units: when(!self.pii.is_empty()),
            sensitive_information_policy_free_units: when(!self.regexes.is_empty()),
            word_policy_units: when(self.words.is_some()),
            ..Usage::default()
        }
    }
}

#[async_trait]
impl Guardrail for LocalGuardrail {
    async fn apply(
        &self,
        source: Source,
        texts: &[String],
    ) -> Result<ApplyGuardrailResponse, GuardrailError> {
        Ok(self.evaluate(source, texts))
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn version(&self) -> &str {
        &self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What one PII type masks in `text`, overlaps resolved as the engine does.
    fn detect(kind: &str, text: &str) -> Vec<String> {
        let kind = PiiType::parse(kind).unwrap();
        let findings = kind
            .find(text)
            .into_iter()
            .map(|range| Finding {
                range,
                detector: Detector::Pii(kind),
                action: SensitiveAction::Anonymize,
            })
            .collect();
        let (masks, _) = resolve_overlaps(findings);
        masks
            .into_iter()
            .map(|m| text[m.range].to_owned())
            .collect()
    }

    /// Each text must be detected whole.
    fn assert_detects_whole(kind: &str, texts: &[&str]) {
        for text in texts {
            assert_eq!(detect(kind, text), [*text], "{kind} in {text:?}");
        }
    }

    fn assert_detects_nothing(kind: &str, texts: &[&str]) {
        for text in texts {
            assert_eq!(
                detect(kind, text),
                Vec::<String>::new(),
                "{kind} in {text:?}"
            );
        }
    }

    fn guardrail(config: serde_json::Value) -> LocalGuardrail {
        LocalGuardrail::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    fn config_error(config: serde_json::Value) -> ConfigError {
        LocalGuardrail::new(serde_json::from_value(config).unwrap()).unwrap_err()
    }

    fn texts(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| (*t).to_owned()).collect()
    }

    fn output_texts(response: &ApplyGuardrailResponse) -> Vec<&str> {
        response.outputs.iter().map(|o| o.text.as_str()).collect()
    }

    const AWS_EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    // ---- detectors ----

    #[test]
    fn email() {
        assert_detects_whole(
            "EMAIL",
            &[
                "alice@example.com",
                "alice.smith+tag@mail.example.co.uk",
                "x_1-y@a-b.io",
            ],
        );
        assert_eq!(
            detect("EMAIL", "Write to Bob@Example.ORG."),
            ["Bob@Example.ORG"]
        );
        assert_eq!(detect("EMAIL", "a@b.io,c@d.io"), ["a@b.io", "c@d.io"]);
        assert_detects_nothing(
            "EMAIL",
            &[
                "npm i lodash@4.17.21",
                "ping @alice",
                "root@localhost",
                "alice%40example.com",
                "a@b.c",
            ],
        );
    }

    #[test]
    fn email_inside_a_url_is_found_without_the_url() {
        assert_eq!(
            detect(
                "EMAIL",
                "https://example.com/unsubscribe?email=bob@example.org&list=7"
            ),
            ["bob@example.org"]
        );
        assert_eq!(
            detect("EMAIL", "<mailto:carol@example.net>"),
            ["carol@example.net"]
        );
    }

    #[test]
    fn phone_formats() {
        assert_detects_whole(
            "PHONE",
            &[
                "(415) 555-2671",
                "415-555-2671",
                "415.555.2671",
                "415 555 2671",
                "4155552671",
                "1-415-555-2671",
                "+1 415 555 2671",
                "+1 (415) 555-2671",
                "+14155552671",
                "+442079460958",
                "+44 20 7946 0958",
                "+49-30-901820",
            ],
        );
        assert_eq!(
            detect("PHONE", "call me at 415-555-2671, thanks"),
            ["415-555-2671"]
        );
        assert_detects_nothing(
            "PHONE",
            &[
                "123-456-7890",      // area code starts with 1
                "415-155-2671",      // exchange starts with 1
                "41555526712",       // 11 digits, no country code
                "order 4155552671X", // glued to a letter
                "+12345",            // too short for E.164
                "+1234567890123456", // too long for E.164
                "released 2024-05-01",
                "version 2.5.1",
            ],
        );
    }

    #[test]
    fn us_social_security_number_rules() {
        assert_detects_whole("US_SOCIAL_SECURITY_NUMBER", &["123-45-6789", "123 45 6789"]);
        assert_detects_nothing(
            "US_SOCIAL_SECURITY_NUMBER",
            &[
                "000-12-3456", // area 000
                "666-12-3456", // area 666
                "912-12-3456", // area 9xx
                "123-00-4567", // group 00
                "123-45-0000", // serial 0000
                "123-45 6789", // mixed separators
                "123456789",   // bare digits
                "1123-45-6789",
                "123-45-67890",
            ],
        );
    }

    #[test]
    fn credit_card_numbers_are_luhn_checked() {
        assert_detects_whole(
            "CREDIT_DEBIT_CARD_NUMBER",
            &[
                "4111111111111111",
                "4111 1111 1111 1111",
                "4111-1111-1111-1111",
                "5555555555554444",
                "378282246310005",   // Amex, 15 digits
                "3782 822463 10005", // Amex layout 4-6-5
                "4222222222222",     // 13 digits
                "6011111111111117",
            ],
        );
        assert_detects_nothing(
            "CREDIT_DEBIT_CARD_NUMBER",
            &[
                "4111 1111 1111 1112", // Luhn-invalid
                "4111111111111112",
                "4111 1111 1111",       // 12 digits
                "41111111111111111111", // 20 digits
                "0000 0000 0000 0000",  // Luhn-valid but not a card
                "x4111111111111111",    // glued to a letter
                "1 2 3 4 5 6 7 8 9 1 2 3 4 5 6",
            ],
        );
        // a CVV or other number after the card does not hide it
        assert_eq!(
            detect(
                "CREDIT_DEBIT_CARD_NUMBER",
                "card 4111 1111 1111 1111 123 exp"
            ),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            detect(
                "CREDIT_DEBIT_CARD_NUMBER",
                "4111111111111111 5555555555554444"
            ),
            ["4111111111111111", "5555555555554444"]
        );
    }

    #[test]
    fn aws_access_key() {
        assert_detects_whole(
            "AWS_ACCESS_KEY",
            &["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
        );
        assert_eq!(
            detect(
                "AWS_ACCESS_KEY",
                "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"
            ),
            ["AKIAIOSFODNN7EXAMPLE"]
        );
        assert_detects_nothing(
            "AWS_ACCESS_KEY",
            &[
                "AKIAIOSFODNN7EXAMPL",
                "AKIAIOSFODNN7EXAMPLEX",
                "XAKIAIOSFODNN7EXAMPLE",
                "akiaiosfodnn7example",
            ],
        );
    }

    #[test]
    fn aws_secret_key_needs_context_or_to_stand_alone() {
        let with_context = [
            format!("aws_secret_access_key = {AWS_EXAMPLE_SECRET}"),
            format!("AKIAIOSFODNN7EXAMPLE {AWS_EXAMPLE_SECRET}"),
            format!("{AWS_EXAMPLE_SECRET} is my AWS secret"),
            format!("  {AWS_EXAMPLE_SECRET}\n"), // the whole text
        ];
        for text in &with_context {
            assert_eq!(
                detect("AWS_SECRET_KEY", text),
                [AWS_EXAMPLE_SECRET],
                "{text:?}"
            );
        }
        let without = [
            format!("the build token is {AWS_EXAMPLE_SECRET} today"), // no AWS context
            format!("aws {}", "0123456789abcdef0123456789abcdef01234567"), // git hash
            format!("aws secret {AWS_EXAMPLE_SECRET}A"),              // 41 characters
            format!("aws secret x_{AWS_EXAMPLE_SECRET}"),             // part of a longer token
            format!("aws secret {}", "A".repeat(40)),                 // not mixed
            format!("laws and {AWS_EXAMPLE_SECRET}"),                 // "aws" inside a word
            format!("{AWS_EXAMPLE_SECRET}{}aws", " ".repeat(101)),    // context too far away
        ];
        for text in &without {
            assert!(detect("AWS_SECRET_KEY", text).is_empty(), "{text:?}");
        }
    }

    #[test]
    fn ip_addresses() {
        assert_detects_whole(
            "IP_ADDRESS",
            &[
                "10.0.0.1",
                "255.255.255.255",
                "0.0.0.0",
                "2001:db8::8a2e:370:7334",
                "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
                "::1",
                "fe80::1",
                "::ffff:192.0.2.128",
            ],
        );
        assert_eq!(detect("IP_ADDRESS", "ping fe80::1."), ["fe80::1"]);
        assert_eq!(
            detect("IP_ADDRESS", "addr:2001:db8::1, gw 192.168.1.1."),
            ["2001:db8::1", "192.168.1.1"]
        );
        assert_detects_nothing(
            "IP_ADDRESS",
            &[
                "999.1.1.1",
                "256.1.1.1",
                "1.2.3.4.5",
                "version 0.1.2.3.4",
                "01.2.3.4",
                "12:30:45",
                "std::io::Result",
                "00:1A:2B:3C:4D:5E",
                "a :: b",
                "10.0.0",
            ],
        );
    }

    // ---- the engine ----

    fn sample_config() -> serde_json::Value {
        json!({
            "blocked_input_message": "Sorry, I can't help with that request.",
            "blocked_output_message": "Sorry, I can't share that response.",
            "pii": [
                {"type": "EMAIL", "action": "ANONYMIZE"},
                {"type": "PHONE", "action": "ANONYMIZE"},
                {"type": "US_SOCIAL_SECURITY_NUMBER", "action": "BLOCK"}
            ],
            "regexes": [{"name": "ticket", "pattern": "TCK-[0-9]{6}", "action": "ANONYMIZE"}],
            "words": ["project falcon", "darkweb"]
        })
    }

    #[test]
    fn nothing_found_is_action_none_with_usage() {
        let response = guardrail(sample_config()).evaluate(Source::Input, &texts(&["hello there"]));
        assert_eq!(response.action, GuardrailAction::None);
        assert!(response.outputs.is_empty());
        assert!(response.assessments.is_empty());
        assert!(!response.blocked() && !response.anonymized_only());
        assert_eq!(response.text_units(), 1);
    }

    #[test]
    fn anonymize_masks_with_bedrock_placeholders() {
        let response = guardrail(sample_config()).evaluate(
            Source::Input,
            &texts(&["Mail alice@example.com or call 415-555-2671 about TCK-123456."]),
        );
        assert_eq!(response.action, GuardrailAction::GuardrailIntervened);
        assert!(response.anonymized_only());
        assert!(!response.blocked());
        assert_eq!(
            output_texts(&response),
            ["Mail {EMAIL} or call {PHONE} about {ticket}."]
        );
        let policy = response.assessments[0]
            .sensitive_information_policy
            .as_ref()
            .unwrap();
        let pii: Vec<_> = policy
            .pii_entities
            .iter()
            .map(|e| (e.kind.as_str(), e.matched.as_str(), e.action))
            .collect();
        assert_eq!(
            pii,
            [
                ("EMAIL", "alice@example.com", FilterAction::Anonymized),
                ("PHONE", "415-555-2671", FilterAction::Anonymized),
            ]
        );
        assert_eq!(policy.regexes[0].name, "ticket");
        assert_eq!(policy.regexes[0].regex, "TCK-[0-9]{6}");
        assert_eq!(policy.regexes[0].matched, "TCK-123456");
        assert_eq!(
            response.policies_fired(),
            [
                "sensitiveInformation:EMAIL",
                "sensitiveInformation:PHONE",
                "regex:ticket"
            ]
        );
    }

    #[test]
    fn any_block_wins_with_the_message_for_the_source() {
        let engine = guardrail(sample_config());
        let prompt = texts(&["I am alice@example.com", "my SSN is 123-45-6789"]);
        let input = engine.evaluate(Source::Input, &prompt);
        assert!(input.blocked());
        assert!(!input.anonymized_only());
        assert_eq!(
            output_texts(&input),
            ["Sorry, I can't help with that request."]
        );
        let pii = &input.assessments[0]
            .sensitive_information_policy
            .as_ref()
            .unwrap()
            .pii_entities;
        let actions: Vec<_> = pii.iter().map(|e| (e.kind.as_str(), e.action)).collect();
        assert_eq!(
            actions,
            [
                ("EMAIL", FilterAction::Anonymized),
                ("US_SOCIAL_SECURITY_NUMBER", FilterAction::Blocked)
            ]
        );

        let output = engine.evaluate(Source::Output, &prompt);
        assert_eq!(
            output_texts(&output),
            ["Sorry, I can't share that response."]
        );
    }

    #[test]
    fn denied_words_block_case_insensitively_on_word_boundaries() {
        let engine = guardrail(sample_config());
        for text in [
            "Tell me about the DarkWeb.",
            "PROJECT   Falcon status?",
            "darkweb",
            "(project\nfalcon)",
        ] {
            let response = engine.evaluate(Source::Input, &texts(&[text]));
            assert!(response.blocked(), "{text:?}");
            assert_eq!(response.policies_fired(), ["word"]);
        }
        for text in [
            "darkwebs are scary",
            "the undarkweb",
            "projectfalcon",
            "project falcons",
            "project: falcon",
        ] {
            let response = engine.evaluate(Source::Input, &texts(&[text]));
            assert_eq!(response.action, GuardrailAction::None, "{text:?}");
        }
        let response = engine.evaluate(Source::Output, &texts(&["Darkweb and darkweb"]));
        let words = &response.assessments[0]
            .word_policy
            .as_ref()
            .unwrap()
            .custom_words;
        let matched: Vec<_> = words
            .iter()
            .map(|w| (w.matched.as_str(), w.action))
            .collect();
        assert_eq!(
            matched,
            [
                ("Darkweb", FilterAction::Blocked),
                ("darkweb", FilterAction::Blocked)
            ]
        );
    }

    #[test]
    fn denied_words_with_symbols_and_unicode() {
        let engine = guardrail(json!({"words": ["c++", "Café", "project"]}));
        assert!(
            engine
                .evaluate(Source::Input, &texts(&["I write C++."]))
                .blocked()
        );
        assert!(
            engine
                .evaluate(Source::Input, &texts(&["au CAFÉ du coin"]))
                .blocked()
        );
        assert!(
            !engine
                .evaluate(Source::Input, &texts(&["les cafés"]))
                .blocked()
        );
        assert!(
            !engine
                .evaluate(Source::Input, &texts(&["projectile"]))
                .blocked()
        );
    }

    #[test]
    fn multiple_texts_give_one_output_each() {
        let response = guardrail(sample_config()).evaluate(
            Source::Output,
            &texts(&[
                "first: bob@example.org",
                "second is clean",
                "third: TCK-000001",
            ]),
        );
        assert!(response.anonymized_only());
        assert_eq!(
            output_texts(&response),
            ["first: {EMAIL}", "second is clean", "third: {ticket}"]
        );
        assert_eq!(response.assessments.len(), 1, "one assessment for the call");
        assert_eq!(
            response.policies_fired(),
            ["sensitiveInformation:EMAIL", "regex:ticket"]
        );
    }

    #[test]
    fn overlapping_findings_are_masked_once() {
        // the local part is a phone number: one {EMAIL}, not "{PHONE}@example.com"
        let engine = guardrail(sample_config());
        let response = engine.evaluate(
            Source::Input,
            &texts(&["reach 415-555-2671@example.com now"]),
        );
        assert_eq!(output_texts(&response), ["reach {EMAIL} now"]);
        assert_eq!(response.policies_fired(), ["sensitiveInformation:EMAIL"]);

        // a blocking finding inside an anonymized one is still reported, and blocks
        let engine = guardrail(json!({"pii": [
            {"type": "EMAIL", "action": "ANONYMIZE"},
            {"type": "PHONE", "action": "BLOCK"}
        ]}));
        let response = engine.evaluate(
            Source::Input,
            &texts(&["reach 415-555-2671@example.com now"]),
        );
        assert!(response.blocked());
        assert_eq!(
            response.policies_fired(),
            ["sensitiveInformation:EMAIL", "sensitiveInformation:PHONE"]
        );

        // the same span from a PII type and a regex: the PII type (configured first) names it
        let engine = guardrail(json!({
            "pii": [{"type": "US_SOCIAL_SECURITY_NUMBER", "action": "ANONYMIZE"}],
            "regexes": [{"name": "ssn-ish", "pattern": "[0-9]{3}-[0-9]{2}-[0-9]{4}", "action": "ANONYMIZE"}]
        }));
        let response = engine.evaluate(Source::Input, &texts(&["ssn 123-45-6789"]));
        assert_eq!(output_texts(&response), ["ssn {US_SOCIAL_SECURITY_NUMBER}"]);
    }

    #[test]
    fn unicode_around_matches_keeps_byte_offsets_right() {
        let engine = guardrail(sample_config());
        let response = engine.evaluate(
            Source::Input,
            &texts(&["Grüße 👋 ñandú: alice@example.com — 電話 415-555-2671。ok TCK-999999✓"]),
        );
        assert_eq!(
            output_texts(&response),
            ["Grüße 👋 ñandú: {EMAIL} — 電話 {PHONE}。ok {ticket}✓"]
        );
        let pii = &response.assessments[0]
            .sensitive_information_policy
            .as_ref()
            .unwrap()
            .pii_entities;
        assert_eq!(pii[0].matched, "alice@example.com");
        assert_eq!(pii[1].matched, "415-555-2671");
    }

    #[test]
    fn custom_regex_empty_matches_are_ignored() {
        let engine =
            guardrail(json!({"regexes": [{"name": "xs", "pattern": "x*", "action": "BLOCK"}]}));
        assert_eq!(
            engine.evaluate(Source::Input, &texts(&["abc"])).action,
            GuardrailAction::None
        );
        let response = engine.evaluate(Source::Input, &texts(&["abxxc"]));
        assert!(response.blocked());
        assert_eq!(response.policies_fired(), ["regex:xs"]);
    }

    #[test]
    fn response_json_uses_aws_field_names() {
        let response = guardrail(sample_config()).evaluate(
            Source::Input,
            &texts(&["alice@example.com TCK-123456 darkweb"]),
        );
        let value = serde_json::to_value(&response).unwrap();
        assert_eq!(
            value,
            json!({
                "action": "GUARDRAIL_INTERVENED",
                "outputs": [{"text": "Sorry, I can't help with that request."}],
                "assessments": [{
                    "wordPolicy": {
                        "customWords": [{"match": "darkweb", "action": "BLOCKED", "detected": true}],
                        "managedWordLists": []
                    },
                    "sensitiveInformationPolicy": {
                        "piiEntities": [
                            {"type": "EMAIL", "match": "alice@example.com", "action": "ANONYMIZED", "detected": true}
                        ],
                        "regexes": [{
                            "name": "ticket", "match": "TCK-123456", "regex": "TCK-[0-9]{6}",
                            "action": "ANONYMIZED", "detected": true
                        }]
                    }
                }],
                "usage": {
                    "topicPolicyUnits": 0,
                    "contentPolicyUnits": 0,
                    "wordPolicyUnits": 1,
                    "sensitiveInformationPolicyUnits": 1,
                    "sensitiveInformationPolicyFreeUnits": 1,
                    "contextualGroundingPolicyUnits": 0
                }
            })
        );
        let back: ApplyGuardrailResponse = serde_json::from_value(value).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn text_units_per_started_thousand_characters_per_text_and_policy() {
        assert_eq!(text_units(""), 0);
        assert_eq!(text_units("a"), 1);
        assert_eq!(text_units(&"a".repeat(1000)), 1);
        assert_eq!(text_units(&"a".repeat(1001)), 2);
        assert_eq!(text_units(&"é".repeat(1000)), 1, "characters, not bytes");

        let engine = guardrail(sample_config());
        let response = engine.evaluate(Source::Input, &texts(&[&"a".repeat(2500), "short", ""]));
        let usage = response.usage.clone().unwrap();
        assert_eq!(usage.sensitive_information_policy_units, 4); // 3 + 1 + 0
        assert_eq!(usage.sensitive_information_policy_free_units, 4);
        assert_eq!(usage.word_policy_units, 4);
        assert_eq!(response.text_units(), 4, "only PII units are billed");

        let words_only = guardrail(json!({"words": ["darkweb"]}));
        let response = words_only.evaluate(Source::Input, &texts(&["hello"]));
        assert_eq!(response.usage.as_ref().unwrap().word_policy_units, 1);
        assert_eq!(
            response
                .usage
                .as_ref()
                .unwrap()
                .sensitive_information_policy_units,
            0
        );
        assert_eq!(response.text_units(), 0, "word filters are free");
    }

    #[test]
    fn policies_fired_never_contain_the_matched_text() {
        let response = guardrail(sample_config()).evaluate(
            Source::Input,
            &texts(&["123-45-6789 alice@example.com darkweb"]),
        );
        let fired = response.policies_fired().join(" ");
        for secret in ["123-45-6789", "alice@example.com", "darkweb"] {
            assert!(!fired.contains(secret), "{fired}");
        }
    }

    #[tokio::test]
    async fn the_trait_is_deterministic_and_versioned() {
        let engine: Box<dyn Guardrail> = Box::new(guardrail(sample_config()));
        let input = texts(&["alice@example.com"]);
        let first = engine.apply(Source::Input, &input).await.unwrap();
        let second = engine.apply(Source::Input, &input).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(engine.name(), "local");
        assert!(engine.version().starts_with("local-"));
        assert_eq!(engine.version(), guardrail(sample_config()).version());
        assert_ne!(
            engine.version(),
            guardrail(json!({"words": ["x"]})).version()
        );
    }

    #[test]
    fn large_inputs_are_scanned_in_one_pass() {
        // many candidates of every kind in one text: quadratic work here would take minutes
        let chunk = format!(
            "aws {AWS_EXAMPLE_SECRET} 4111 1111 1111 1111 1 2 3 4 415-555-2671 10.0.0.1 fe80::1 "
        );
        let text = chunk.repeat(2_000);
        let engine = guardrail(json!({"pii": [
            {"type": "AWS_SECRET_KEY", "action": "ANONYMIZE"},
            {"type": "CREDIT_DEBIT_CARD_NUMBER", "action": "ANONYMIZE"},
            {"type": "PHONE", "action": "ANONYMIZE"},
            {"type": "IP_ADDRESS", "action": "ANONYMIZE"}
        ]}));
        let response = engine.evaluate(Source::Input, &[text]);
        let pii = &response.assessments[0]
            .sensitive_information_policy
            .as_ref()
            .unwrap()
            .pii_entities;
        assert_eq!(pii.len(), 2_000 * 5);
        assert_eq!(
            output_texts(&response)[0].split_once(" aws").unwrap().0,
            "aws {AWS_SECRET_KEY} {CREDIT_DEBIT_CARD_NUMBER} 1 2 3 4 {PHONE} {IP_ADDRESS} {IP_ADDRESS}"
        );
    }

    // ---- configuration ----

    #[test]
    fn toml_config_in_bedrock_vocabulary() {
        use figment::providers::{Format, Toml};
        let config: LocalGuardrailConfig = figment::Figment::from(Toml::string(
            r#"
            blocked_input_message = "Sorry, I can't help with that request."
            pii = [ { type = "EMAIL", action = "ANONYMIZE" }, { type = "US_SOCIAL_SECURITY_NUMBER", action = "BLOCK" } ]
            regexes = [ { name = "ticket", pattern = "TCK-[0-9]{6}", action = "ANONYMIZE" } ]
            words = ["project falcon", "darkweb"]
            "#,
        ))
        .extract()
        .unwrap();
        assert_eq!(config.blocked_output_message, DEFAULT_BLOCKED_MESSAGE);
        assert_eq!(config.pii[1].action, SensitiveAction::Block);
        LocalGuardrail::new(config).unwrap();
        assert!(LocalGuardrail::new(LocalGuardrailConfig::default()).is_ok());
    }

    #[test]
    fn unknown_fields_and_actions_are_refused() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<LocalGuardrailConfig>(v)
                .unwrap_err()
                .to_string()
        };
        assert!(parse(json!({"wrods": ["x"]})).contains("wrods"));
        assert!(parse(json!({"pii": [{"type": "EMAIL", "action": "MASK"}]})).contains("MASK"));
        assert!(
            parse(json!({"pii": [{"type": "EMAIL", "action": "BLOCK", "extra": 1}]}))
                .contains("extra")
        );
    }

    #[test]
    fn invalid_regexes_name_the_field_and_the_regex() {
        let regexes = |pattern: &str| {
            json!({"regexes": [
                {"name": "fine", "pattern": "ok", "action": "BLOCK"},
                {"name": "ticket", "pattern": pattern, "action": "ANONYMIZE"}
            ]})
        };
        for (pattern, reason) in [
            ("TCK-[0-9", "unclosed character class"),
            ("(?<=TCK-)[0-9]+", "look-around, including look-ahead"),
            ("TCK-(?=[0-9])", "look-around, including look-ahead"),
            (r"(a)\1", "backreferences are not supported"),
            ("", "empty pattern"),
        ] {
            let error = config_error(regexes(pattern));
            assert_eq!(error.field, "regexes[1].pattern", "{pattern}");
            assert!(error.message.contains("\"ticket\""), "{error}");
            assert!(error.message.contains(reason), "{pattern}: {error}");
            assert!(!error.message.contains('\n'), "{error}");
        }
        let duplicate = config_error(json!({"regexes": [
            {"name": "t", "pattern": "a", "action": "BLOCK"},
            {"name": "t", "pattern": "b", "action": "BLOCK"}
        ]}));
        assert_eq!(duplicate.field, "regexes[1].name");
        let unnamed =
            config_error(json!({"regexes": [{"name": " ", "pattern": "a", "action": "BLOCK"}]}));
        assert_eq!(unnamed.field, "regexes[0].name");
    }

    #[test]
    fn model_based_and_unknown_pii_types_are_refused() {
        for kind in ["NAME", "ADDRESS"] {
            let error = config_error(json!({"pii": [
                {"type": "EMAIL", "action": "BLOCK"},
                {"type": kind, "action": "ANONYMIZE"}
            ]}));
            assert_eq!(error.field, "pii[1].type");
            assert!(
                error.message.contains(kind) && error.message.contains("Bedrock"),
                "{error}"
            );
            assert!(error.message.contains("model"), "{error}");
        }
        let error = config_error(json!({"pii": [{"type": "SWIFT_CODE", "action": "BLOCK"}]}));
        assert!(error.message.contains("not supported"), "{error}");
        let error = config_error(json!({"pii": [{"type": "email", "action": "BLOCK"}]}));
        assert!(
            error.message.contains("EMAIL"),
            "lists the supported types: {error}"
        );
        let error = config_error(json!({"pii": [
            {"type": "EMAIL", "action": "BLOCK"},
            {"type": "EMAIL", "action": "ANONYMIZE"}
        ]}));
        assert_eq!(error.field, "pii[1].type");
    }

    #[test]
    fn empty_words_and_messages_are_refused() {
        assert_eq!(
            config_error(json!({"words": ["ok", "  "]})).field,
            "words[1]"
        );
        assert_eq!(
            config_error(json!({"blocked_output_message": " "})).field,
            "blocked_output_message"
        );
        assert_eq!(
            config_error(json!({"regexes": [{"name": "x", "pattern": "a", "action": "BLOCK"}], "blocked_input_message": ""}))
                .to_string(),
            "guardrail config blocked_input_message: must not be empty"
        );
    }
}
