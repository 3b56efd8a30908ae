//! The endpoint catalogue: what tollgate does with a request, by method and path. Every adapter
//! (Envoy and agentgateway ext_proc, the promptGuard webhook) asks it, so one table decides.
//!
//! Deny by default: an endpoint is a metered model call (checked against RPM, daily tokens,
//! budget, model caps and the allow-list before it is forwarded, charged from its usage after),
//! a free endpoint (identity and RPM only: model lists, token counting, reads of files, batches
//! and stored responses), or refused before the upstream with 404 `endpoint_not_supported`. A
//! path the catalogue does not know is refused, never admitted unmetered: providers keep adding
//! paid endpoints, and a route that sends all of `/v1/` upstream would otherwise let any of them
//! spend past a budget.
//!
//! Patterns match the end of the path, whole segments at a time, so that prefixed and versioned
//! routes (`/openai/v1/chat/completions`, `/v1beta/openai/chat/completions`) classify like
//! `/v1/chat/completions`. Dot segments are resolved and empty ones dropped first, as upstreams
//! do; a path with encoded dots or slashes (`%2e`, `%2f`, `%5c`) or backslashes is never
//! classified (an upstream may decode it into another endpoint). Built-in entries take precedence
//! over the operator's `endpoints.free`, so configuration can open endpoints tollgate does not
//! know but never make a metered or refused one free.

use super::ApiKind;
use crate::policy::{Rejection, RejectionKind};

/// Which API's error shape a refusal takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    OpenAi,
    Anthropic,
}

/// What tollgate does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// A model call: admitted on its body, charged from its usage.
    Metered(ApiKind),
    /// Costs nothing: admitted at its headers (identity, RPM), its bodies left unread.
    Free,
    /// Refused before the upstream.
    Refused(Refusal),
}

/// Why an endpoint is refused; each says so in its own words ([`Endpoint::rejection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not in the catalogue.
    Unknown,
    /// Batch jobs: their cost is known only when they finish.
    Batch,
    /// Audio transcription and translation: billed by audio length, unknown before forwarding.
    Transcription,
    /// A call billed per image or character, through an adapter that sees token usage only (the
    /// webhook, whose usage comes from agentgateway's access logs).
    UnitsNotReported,
}

/// A request's place in the catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub treatment: Treatment,
    pub shape: ErrorShape,
    /// The request's method and path (without its query), for refusals and logs.
    pub method: String,
    pub path: String,
}

impl Endpoint {
    /// The API to parse and meter, if this is a metered model call.
    pub fn metered(&self) -> Option<ApiKind> {
        match self.treatment {
            Treatment::Metered(api) => Some(api),
            _ => None,
        }
    }

    /// The refusal to answer with, for a refused endpoint or `why` decided by an adapter.
    pub fn rejection(&self, why: Refusal) -> Rejection {
        let (method, path) = (&self.method, &self.path);
        let reason = match why {
            Refusal::Unknown => format!(
                "{method} {path} is not an endpoint tollgate meters, so it is refused rather than \
                 passed unmetered. If it costs nothing, a tollgate operator can allow it with \
                 endpoints.free = [\"{method} {path}\"]"
            ),
            Refusal::Batch => format!(
                "{method} {path}: batch jobs are refused because their cost is known only when the \
                 batch finishes, after tollgate let it through, so no budget could hold it. Send \
                 the requests one by one (they are metered); tollgate has no setting to admit batches"
            ),
            Refusal::Transcription => format!(
                "{method} {path}: audio transcription and translation are refused because they are \
                 billed by the length of the audio, which tollgate cannot know before it forwards \
                 the upload; tollgate has no setting to admit them"
            ),
            Refusal::UnitsNotReported => format!(
                "{method} {path} is billed per image or character, which the gateway's access logs \
                 do not report, so tollgate cannot meter it through the promptGuard webhook; route \
                 it through tollgate's ext_proc instead"
            ),
        };
        Rejection::new(RejectionKind::EndpointNotSupported, reason)
    }
}

/// The catalogue: built-in entries, then the operator's free endpoints.
#[derive(Clone, Debug)]
pub struct Endpoints {
    builtin: Vec<Entry>,
    configured: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    pattern: Pattern,
    treatment: Treatment,
}

const BUILTIN: &[(&str, Treatment)] = {
    use ApiKind::*;
    use Treatment::{Free, Metered, Refused};
    &[
        ("POST /chat/completions", Metered(OpenAiChat)),
        ("POST /responses", Metered(OpenAiResponses)),
        ("POST /messages", Metered(AnthropicMessages)),
        ("POST /completions", Metered(OpenAiCompletions)),
        ("POST /embeddings", Metered(OpenAiEmbeddings)),
        ("POST /images/generations", Metered(OpenAiImages)),
        ("POST /audio/speech", Metered(OpenAiSpeech)),
        ("GET /models", Free),
        ("GET /models/{id}", Free),
        ("POST /messages/count_tokens", Free),
        ("POST /responses/input_tokens", Free),
        ("GET /responses/{id}", Free),
        ("GET /responses/{id}/input_items", Free),
        ("GET /files", Free),
        ("GET /files/{id}", Free),
        ("GET /files/{id}/content", Free),
        ("GET /batches", Free),
        ("GET /batches/{id}", Free),
        ("GET /messages/batches", Free),
        ("GET /messages/batches/{id}", Free),
        ("GET /messages/batches/{id}/results", Free),
        ("POST /batches", Refused(Refusal::Batch)),
        ("POST /messages/batches", Refused(Refusal::Batch)),
        (
            "POST /audio/transcriptions",
            Refused(Refusal::Transcription),
        ),
        ("POST /audio/translations", Refused(Refusal::Transcription)),
    ]
};

impl Default for Endpoints {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Endpoints {
    pub fn builtin() -> Self {
        let builtin = BUILTIN
            .iter()
            .map(|(pattern, treatment)| Entry {
                pattern: pattern.parse().expect("built-in patterns are valid"),
                treatment: *treatment,
            })
            .collect();
        Self {
            builtin,
            configured: Vec::new(),
        }
    }

    /// The built-in catalogue plus free endpoints from configuration (`"GET /v1/things/{id}"`).
    /// The error names the entry: malformed, or one tollgate meters or refuses on purpose.
    pub fn with_free(free: &[String]) -> Result<Self, String> {
        let mut endpoints = Self::builtin();
        for entry in free {
            let pattern: Pattern = entry.parse().map_err(|e| format!("{entry:?}: {e}"))?;
            match endpoints
                .classify(&pattern.method, &pattern.example_path())
                .treatment
            {
                Treatment::Free | Treatment::Refused(Refusal::Unknown) => {}
                Treatment::Metered(api) => {
                    return Err(format!(
                        "{entry:?} is a metered model call ({}); it cannot be free",
                        api.as_str()
                    ));
                }
                Treatment::Refused(_) => {
                    return Err(format!(
                        "{entry:?} is refused on purpose (its cost cannot be metered); it cannot be free"
                    ));
                }
            }
            endpoints.configured.push(Entry {
                pattern,
                treatment: Treatment::Free,
            });
        }
        Ok(endpoints)
    }

    pub fn classify(&self, method: &str, path: &str) -> Endpoint {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments = segments(path);
        let treatment = segments
            .as_deref()
            .and_then(|segments| {
                most_specific(&self.builtin, method, segments)
                    .or_else(|| most_specific(&self.configured, method, segments))
            })
            .unwrap_or(Treatment::Refused(Refusal::Unknown));
        let shape = match treatment {
            Treatment::Metered(api) => api.error_shape(),
            _ if segments.is_some_and(|s| s.contains(&"messages")) => ErrorShape::Anthropic,
            _ => ErrorShape::OpenAi,
        };
        Endpoint {
            treatment,
            shape,
            method: method.to_owned(),
            path: printable(path),
        }
    }
}

/// The treatment of the longest matching pattern (literal segments beating placeholders).
fn most_specific(entries: &[Entry], method: &str, segments: &[&str]) -> Option<Treatment> {
    entries
        .iter()
        .filter(|e| e.pattern.matches(method, segments))
        .max_by_key(|e| e.pattern.specificity())
        .map(|e| e.treatment)
}

/// The path's segments with dot segments resolved and empty ones dropped; `None` for a path that
/// must not be classified.
fn segments(path: &str) -> Option<Vec<&str>> {
    let lower = path.to_ascii_lowercase();
    if path.contains('\\') || ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e)) {
        return None;
    }
    let mut out = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    Some(out)
}

/// A path fit for a message and a log line: bounded, control characters replaced.
fn printable(path: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = path
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if path.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// `METHOD /path/{placeholder}/...`: a placeholder stands for one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    method: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl Pattern {
    fn matches(&self, method: &str, path: &[&str]) -> bool {
        self.method.eq_ignore_ascii_case(method)
            && path.len() >= self.segments.len()
            && self
                .segments
                .iter()
                .zip(&path[path.len() - self.segments.len()..])
                .all(|(want, have)| match want {
                    Segment::Literal(s) => s == have,
                    Segment::Any => true,
                })
    }

    fn specificity(&self) -> (usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (self.segments.len(), literals)
    }

    /// A path this pattern matches, for checking it against the catalogue.
    fn example_path(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(s) => format!("/{s}"),
                Segment::Any => "/x".to_owned(),
            })
            .collect()
    }
}

impl std::str::FromStr for Pattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (method, path) = s
            .trim()
            .split_once(' ')
            .ok_or("expected \"METHOD /path\", e.g. \"GET /v1/models\"")?;
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(format!("{method:?} is not an HTTP method"));
        }
        let path = path.trim();
        if !path.starts_with('/') || path.contains(['?', '#', '\\', '%']) {
            return Err(format!("{path:?} is not a plain path starting with /"));
        }
        let segments: Vec<Segment> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "." | ".." => Err(format!("{path:?} has a dot segment")),
                s if s.starts_with('{') && s.ends_with('}') => Ok(Segment::Any),
                s if s.contains(['{', '}']) => Err(format!("{s:?} is not a whole {{placeholder}}")),
                s => Ok(Segment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        if segments.is_empty() {
            return Err("the path has no segment".into());
        }
        Ok(Self {
            method: method.to_ascii_uppercase(),
            segments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApiKind::*;

    fn treat(method: &str, path: &str) -> Treatment {
        Endpoints::builtin().classify(method, path).treatment
    }

    #[test]
    fn model_calls_are_metered_under_any_prefix() {
        for (path, api) in [
            ("/v1/chat/completions", OpenAiChat),
            ("/openai/v1/chat/completions?x=1", OpenAiChat),
            ("/v1beta/openai/chat/completions", OpenAiChat),
            ("/v1/responses", OpenAiResponses),
            ("/v1/messages/", AnthropicMessages),
            ("/v1/completions", OpenAiCompletions),
            ("/v1/embeddings", OpenAiEmbeddings),
            ("/v1/images/generations", OpenAiImages),
            ("/v1/audio/speech", OpenAiSpeech),
        ] {
            assert_eq!(treat("POST", path), Treatment::Metered(api), "{path}");
        }
        assert_eq!(
            Endpoints::builtin().classify("POST", "/v1/messages").shape,
            ErrorShape::Anthropic
        );
    }

    #[test]
    fn free_endpoints_are_reads_and_token_counts() {
        for (method, path) in [
            ("GET", "/v1/models"),
            ("GET", "/v1/models/gpt-4o"),
            ("POST", "/v1/messages/count_tokens"),
            ("POST", "/v1/responses/input_tokens"),
            ("GET", "/v1/responses/resp_123"),
            ("GET", "/v1/files/file-abc/content"),
            ("GET", "/v1/batches/batch_1"),
            ("GET", "/v1/messages/batches/msgbatch_1/results"),
        ] {
            assert_eq!(treat(method, path), Treatment::Free, "{method} {path}");
        }
    }

    #[test]
    fn unknown_and_uncountable_endpoints_are_refused() {
        for (method, path, why) in [
            ("POST", "/v1/fine_tuning/jobs", Refusal::Unknown),
            ("POST", "/v1/files", Refusal::Unknown),
            ("POST", "/v1/images/edits", Refusal::Unknown),
            ("DELETE", "/v1/models/ft:gpt-4o:me", Refusal::Unknown),
            ("GET", "/v1/chat/completions", Refusal::Unknown),
            ("POST", "/v1/models", Refusal::Unknown),
            ("POST", "/", Refusal::Unknown),
            ("POST", "/v1/batches", Refusal::Batch),
            ("POST", "/v1/messages/batches", Refusal::Batch),
            ("POST", "/v1/audio/transcriptions", Refusal::Transcription),
        ] {
            assert_eq!(
                treat(method, path),
                Treatment::Refused(why),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn paths_are_read_as_upstreams_resolve_them() {
        assert_eq!(
            treat("POST", "/v1//models/../embeddings"),
            Treatment::Metered(OpenAiEmbeddings)
        );
        assert_eq!(
            treat("POST", "/v1/./chat/completions"),
            Treatment::Metered(OpenAiChat)
        );
        // A free suffix cannot hide a paid endpoint that an upstream would decode.
        for path in [
            "/v1/embeddings%2F..%2Fmessages%2Fcount_tokens",
            "/v1/messages/%2e%2e/count_tokens",
            "/v1\\messages\\count_tokens",
        ] {
            assert_eq!(
                treat("POST", path),
                Treatment::Refused(Refusal::Unknown),
                "{path}"
            );
        }
        assert_eq!(
            treat("POST", "/v1/messages/count_tokens/.."),
            Treatment::Metered(AnthropicMessages)
        );
    }

    #[test]
    fn refusals_name_the_request_and_the_way_out() {
        let e = Endpoints::builtin().classify("POST", "/v1/fine_tuning/jobs?after=1");
        let r = e.rejection(Refusal::Unknown);
        assert_eq!(r.kind, RejectionKind::EndpointNotSupported);
        assert_eq!(r.kind.status(), 404);
        assert!(
            r.reason.contains("POST /v1/fine_tuning/jobs "),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("endpoints.free"), "{}", r.reason);
        let batch = Endpoints::builtin().classify("POST", "/v1/messages/batches");
        assert_eq!(batch.shape, ErrorShape::Anthropic);
        assert!(
            batch
                .rejection(Refusal::Batch)
                .reason
                .contains("cost is known only when")
        );
    }

    #[test]
    fn operators_can_free_unknown_endpoints_but_never_metered_or_refused_ones() {
        let e = Endpoints::with_free(&[
            "POST /v1/files".into(),
            "get /v1/fine_tuning/jobs/{job}".into(),
        ])
        .unwrap();
        assert_eq!(e.classify("POST", "/v1/files").treatment, Treatment::Free);
        assert_eq!(
            e.classify("GET", "/v1/fine_tuning/jobs/ftjob-1").treatment,
            Treatment::Free
        );
        assert_eq!(
            e.classify("POST", "/v1/fine_tuning/jobs").treatment,
            Treatment::Refused(Refusal::Unknown)
        );
        for bad in [
            "POST /v1/chat/completions",
            "POST /openai/v1/embeddings",
            "POST /v1/batches",
            "POST /v1/audio/transcriptions",
            "/v1/models",
            "GET v1/models",
            "GET /v1/models?x",
            "GET /v1/%2e%2e/x",
            "GET /v1/mo{dels",
        ] {
            assert!(Endpoints::with_free(&[bad.into()]).is_err(), "{bad}");
        }
        // A broad pattern cannot take a metered endpoint: built-in entries are asked first.
        let broad = Endpoints::with_free(&["POST /v1/{anything}".into()]).unwrap();
        assert_eq!(
            broad.classify("POST", "/v1/embeddings").treatment,
            Treatment::Metered(OpenAiEmbeddings)
        );
        assert_eq!(
            broad.classify("POST", "/v1/batches").treatment,
            Treatment::Refused(Refusal::Batch)
        );
        assert_eq!(
            broad.classify("POST", "/v1/uploads").treatment,
            Treatment::Free
        );
    }
}
