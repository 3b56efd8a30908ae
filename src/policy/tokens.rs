//! Daily token limits: checked before a request from tokens already debited today, debited after
//! the response with the provider's actual usage. Concurrent in-flight requests can therefore
//! overshoot the limit by at most their own usage; the next request after that is refused.

/// Whether a team that has used `used` tokens today may send another request.
pub fn within_daily_limit(used: u64, limit: Option<u64>) -> bool {
    limit.is_none_or(|limit| used < limit)
}

pub fn remaining(used: u64, limit: Option<u64>) -> Option<u64> {
    limit.map(|l| l.saturating_sub(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_once_the_limit_is_reached() {
        assert!(within_daily_limit(999, Some(1000)));
        assert!(!within_daily_limit(1000, Some(1000)));
        assert!(!within_daily_limit(1030, Some(1000)));
        assert!(within_daily_limit(u64::MAX, None));
    }

    #[test]
    fn remaining_saturates() {
        assert_eq!(remaining(1030, Some(1000)), Some(0));
        assert_eq!(remaining(10, Some(1000)), Some(990));
        assert_eq!(remaining(10, None), None);
    }
}
