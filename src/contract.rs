//! The HTTP face of decisions, shared by every adapter: the rate headers on allowed responses and
//! the status, headers and body of a refusal (docs/design.md "Rejection contract").

use crate::llm::{ErrorShape, errors::rejection_body};
use crate::policy::{RateHeaders, Rejection};

pub type Headers = Vec<(&'static str, String)>;

/// `X-RateLimit-*` for the request window, plus `-Tokens` variants for the daily token budget.
pub fn rate_headers(rate: &RateHeaders) -> Headers {
    let mut headers = vec![
        ("x-ratelimit-limit", rate.rpm_limit.to_string()),
        ("x-ratelimit-remaining", rate.rpm_remaining.to_string()),
        ("x-ratelimit-reset", rate.rpm_reset_secs.to_string()),
    ];
    if let (Some(limit), Some(remaining)) = (rate.tokens_limit, rate.tokens_remaining) {
        headers.push(("x-ratelimit-limit-tokens", limit.to_string()));
        headers.push(("x-ratelimit-remaining-tokens", remaining.to_string()));
    }
    headers
}

/// A complete HTTP response for a refusal.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// `shape`: the calling API's error shape (an `ApiKind` converts into its own).
pub fn rejection_reply(shape: impl Into<ErrorShape>, rejection: &Rejection) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(secs) = rejection.retry_after_secs {
        headers.push(("retry-after", secs.to_string()));
    }
    if let Some(rate) = &rejection.rate {
        headers.extend(rate_headers(rate));
    }
    if let Some(scope) = &rejection.scope {
        headers.push(("x-tollgate-limit-scope", header_text(scope)));
    }
    // The OpenAI and Anthropic SDKs honour this header over their own retry rules.
    if !rejection.kind.retryable() {
        headers.push(("x-should-retry", "false".to_owned()));
    }
    Reply {
        status: rejection.kind.status(),
        headers,
        body: rejection_body(shape, rejection),
    }
}

/// A header value from text that may hold anything a token's claim can (a user id): printable
/// ASCII as it is, any other byte percent-encoded.
fn header_text(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'%' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ApiKind;
    use crate::policy::RejectionKind;

    fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn rpm_refusals_carry_retry_after_and_rate_headers() {
        let rate = RateHeaders {
            rpm_limit: 100,
            rpm_remaining: 0,
            rpm_reset_secs: 30,
            tokens_limit: Some(5),
            tokens_remaining: Some(1),
        };
        let reply = rejection_reply(ApiKind::OpenAiChat, &Rejection::rpm_exceeded(100, rate, 42));
        assert_eq!(reply.status, 429);
        assert_eq!(header(&reply, "retry-after"), Some("42"));
        assert_eq!(header(&reply, "x-ratelimit-limit"), Some("100"));
        assert_eq!(header(&reply, "x-ratelimit-remaining-tokens"), Some("1"));
        assert_eq!(header(&reply, "x-should-retry"), None);
    }

    #[test]
    fn a_limit_refusal_names_its_scope_in_a_header() {
        let mut refusal = Rejection::new(RejectionKind::MonthlyBudgetExceeded, "spent");
        refusal.scope = Some("user jürgen in team platform".into());
        let reply = rejection_reply(ApiKind::OpenAiChat, &refusal);
        assert_eq!(
            header(&reply, "x-tollgate-limit-scope"),
            Some("user j%C3%BCrgen in team platform")
        );
    }

    #[test]
    fn unfixable_refusals_tell_sdks_not_to_retry() {
        let reply = rejection_reply(
            ApiKind::AnthropicMessages,
            &Rejection::new(RejectionKind::Forbidden, "no"),
        );
        assert_eq!(reply.status, 403);
        assert_eq!(header(&reply, "x-should-retry"), Some("false"));
        assert_eq!(header(&reply, "retry-after"), None);
    }
}
