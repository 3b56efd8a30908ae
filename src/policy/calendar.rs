//! Calendar arithmetic for counter periods. Periods are keyed by the local date they start on so
//! that a counter's key says which day, week or month it belongs to when an operator reads the
//! store. Budget and token periods ([`PeriodRule`]) are days, weeks (from Monday) or months (from
//! an anchor day) in an IANA time zone, with the time zone database bundled into the binary
//! (`jiff`), so a host without /usr/share/zoneinfo (a Lambda image, a distroless container)
//! computes the same boundaries.

use jiff::civil;
use jiff::tz::TimeZone;
use time::{Date, Month, OffsetDateTime, Time, macros::format_description};

use super::counters::{PeriodKey, PeriodKind};

/// How a budget or token limit's periods run: their length, the day a month starts on, and the
/// time zone whose midnight ends them.
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodRule {
    pub kind: PeriodKind,
    /// Day of the month a monthly period starts on (1-31; a month shorter than that starts on its
    /// last day). Ignored for days and weeks.
    pub anchor_day: u8,
    pub time_zone: TimeZone,
}

/// One period: its key and its bounds in Unix seconds (`start` inclusive, `end` exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub key: PeriodKey,
    pub start: u64,
    pub end: u64,
}

impl PeriodRule {
    /// UTC days: how daily token limits always ran.
    pub fn utc_day() -> Self {
        Self::utc(PeriodKind::Day)
    }

    /// UTC calendar months: how monthly budgets always ran.
    pub fn utc_month() -> Self {
        Self::utc(PeriodKind::Month)
    }

    pub fn utc(kind: PeriodKind) -> Self {
        Self {
            kind,
            anchor_day: 1,
            time_zone: TimeZone::UTC,
        }
    }

    /// `Europe/Berlin` and the like; the database is compiled in.
    pub fn zone(name: &str) -> Result<TimeZone, String> {
        TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
    }

    /// How texts name a period: (`Daily`, `today`), (`Weekly`, `this week`), (`Monthly`,
    /// `this month`).
    pub fn names(&self) -> (&'static str, &'static str) {
        match self.kind {
            PeriodKind::Day => ("Daily", "today"),
            PeriodKind::Week => ("Weekly", "this week"),
            PeriodKind::Month => ("Monthly", "this month"),
        }
    }

    /// The period containing `unix_secs`.
    pub fn containing(&self, unix_secs: u64) -> Period {
        let now = jiff::Timestamp::from_second(unix_secs.min(i64::MAX as u64) as i64)
            .unwrap_or(jiff::Timestamp::MAX)
            .to_zoned_datetime(self.time_zone.clone());
        let today = now.date();
        let start = match self.kind {
            PeriodKind::Day => today,
            PeriodKind::Week => today
                .checked_sub(jiff::Span::new().days(today.weekday().to_monday_zero_offset()))
                .unwrap_or(today),
            PeriodKind::Month => {
                let this = self.month_start(today.year(), today.month());
                if today >= this {
                    this
                } else {
                    let (year, month) = previous_month(today.year(), today.month());
                    self.month_start(year, month)
                }
            }
        };
        let next = match self.kind {
            PeriodKind::Day => start.tomorrow().unwrap_or(start),
            PeriodKind::Week => start
                .checked_add(jiff::Span::new().days(7))
                .unwrap_or(start),
            PeriodKind::Month => {
                let (year, month) = next_month(start.year(), start.month());
                self.month_start(year, month)
            }
        };
        Period {
            key: PeriodKey {
                kind: self.kind,
                start: to_time_date(start),
            },
            start: self.local_midnight(start),
            end: self.local_midnight(next),
        }
    }

    /// The anchor day of a month, or its last day when the month is shorter.
    fn month_start(&self, year: i16, month: i8) -> civil::Date {
        let first = civil::date(year, month, 1);
        let day = (self.anchor_day.clamp(1, 31) as i8).min(first.days_in_month());
        civil::date(year, month, day)
    }

    /// Unix seconds of the first instant of `date` in the zone (a midnight a DST change skips
    /// begins the day at the first instant after the gap).
    fn local_midnight(&self, date: civil::Date) -> u64 {
        date.to_zoned_datetime(self.time_zone.clone())
            .map_or(u64::MAX, |z| z.timestamp().as_second().max(0) as u64)
    }
}

fn next_month(year: i16, month: i8) -> (i16, i8) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn previous_month(year: i16, month: i8) -> (i16, i8) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

fn to_time_date(date: civil::Date) -> Date {
    Month::try_from(date.month() as u8)
        .ok()
        .and_then(|m| Date::from_calendar_date(i32::from(date.year()), m, date.day() as u8).ok())
        .unwrap_or(Date::MIN)
}

const SECS_PER_DAY: u64 = 86_400;

/// The UTC date containing `unix_secs`.
pub fn utc_date(unix_secs: u64) -> Date {
    OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .map(|t| t.date())
        .unwrap_or(Date::MIN)
}

/// `YYYY-MM-DD` of the UTC day containing `unix_secs`.
pub fn day_key(unix_secs: u64) -> String {
    utc_date(unix_secs)
        .format(format_description!("[year]-[month]-[day]"))
        .expect("date formatting cannot fail for a valid date")
}

/// Seconds from `unix_secs` until the next UTC midnight (1..=86400).
pub fn secs_until_next_day(unix_secs: u64) -> u64 {
    SECS_PER_DAY - unix_secs % SECS_PER_DAY
}

/// Unix time of the next UTC midnight after `unix_secs`.
pub fn next_day_start(unix_secs: u64) -> u64 {
    unix_secs + secs_until_next_day(unix_secs)
}

/// `YYYY-MM` of the UTC month containing `unix_secs`.
pub fn month_key(unix_secs: u64) -> String {
    utc_date(unix_secs)
        .format(format_description!("[year]-[month]"))
        .expect("date formatting cannot fail for a valid date")
}

/// `YYYY-MM` of the `back`-th month before the one containing `unix_secs`.
pub fn month_key_before(unix_secs: u64, back: u32) -> String {
    let date = utc_date(unix_secs);
    let index = date.year() * 12 + i32::from(u8::from(date.month())) - 1 - back as i32;
    format!(
        "{:04}-{:02}",
        index.div_euclid(12),
        index.rem_euclid(12) + 1
    )
}

/// Unix time of the first second of the next UTC month.
pub fn next_month_start(unix_secs: u64) -> u64 {
    let date = utc_date(unix_secs);
    let (year, month) = match date.month() {
        Month::December => (date.year() + 1, Month::January),
        m => (date.year(), m.next()),
    };
    Date::from_calendar_date(year, month, 1)
        .map(|d| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp() as u64)
        .unwrap_or(u64::MAX)
}

/// Seconds from `unix_secs` until the next UTC month starts.
pub fn secs_until_next_month(unix_secs: u64) -> u64 {
    next_month_start(unix_secs).saturating_sub(unix_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-21T23:59:59Z and the second after it.
    const LAST_SECOND: u64 = 1_795_305_599;

    #[test]
    fn day_rolls_over_at_utc_midnight() {
        assert_eq!(day_key(LAST_SECOND), "2026-11-21");
        assert_eq!(day_key(LAST_SECOND + 1), "2026-11-22");
        assert_eq!(secs_until_next_day(LAST_SECOND), 1);
        assert_eq!(secs_until_next_day(LAST_SECOND + 1), 86_400);
        assert_eq!(next_day_start(LAST_SECOND), LAST_SECOND + 1);
    }

    #[test]
    fn month_and_year_boundaries() {
        assert_eq!(day_key(1_798_761_599), "2026-12-31");
        assert_eq!(day_key(1_798_761_600), "2027-01-01");
        assert_eq!(month_key(1_798_761_599), "2026-12");
        assert_eq!(month_key(1_798_761_600), "2027-01");
        assert_eq!(next_month_start(1_798_761_599), 1_798_761_600);
        assert_eq!(secs_until_next_month(1_798_761_599), 1);
        // The first second of a month belongs to it; the next month starts a whole month later.
        assert_eq!(next_month_start(1_798_761_600), 1_798_761_600 + 31 * 86_400);
        assert_eq!(month_key_before(1_798_761_600, 1), "2026-12");
        assert_eq!(month_key_before(1_798_761_600, 13), "2025-12");
    }

    fn rule(kind: PeriodKind, anchor_day: u8, zone: &str) -> PeriodRule {
        PeriodRule {
            kind,
            anchor_day,
            time_zone: PeriodRule::zone(zone).unwrap(),
        }
    }

    #[test]
    fn utc_periods_are_the_calendar_days_and_months_counters_always_used() {
        let day = PeriodRule::utc_day().containing(LAST_SECOND);
        assert_eq!(day.key.render(), day_key(LAST_SECOND));
        assert_eq!(day.end, next_day_start(LAST_SECOND));
        let month = PeriodRule::utc_month().containing(1_798_761_599);
        assert_eq!(month.key.render(), "2026-12");
        assert_eq!(month.end, 1_798_761_600);
        assert_eq!(month.start, 1_798_761_600 - 31 * 86_400);
    }

    #[test]
    fn a_week_in_berlin_rolls_over_at_local_midnight_on_monday() {
        let week = rule(PeriodKind::Week, 1, "Europe/Berlin");
        // Monday 2026-11-30 00:00 in Berlin (CET, UTC+1) is Sunday 2026-11-29 23:00 UTC.
        let boundary = 1_795_993_200;
        let before = week.containing(boundary - 1);
        let after = week.containing(boundary);
        assert_eq!(before.key.render(), "week-2026-11-23");
        assert_eq!(before.end, boundary);
        assert_eq!(after.key.render(), "week-2026-11-30");
        assert_eq!(after.start, boundary);
        assert_eq!(after.end, boundary + 7 * 86_400);
        // The same instant in UTC is still in the earlier week.
        assert_eq!(
            rule(PeriodKind::Week, 1, "UTC")
                .containing(boundary)
                .key
                .render(),
            "week-2026-11-23"
        );
    }

    #[test]
    fn a_week_across_a_dst_change_is_shorter() {
        // The week of 2026-10-26 (Monday) in New York holds the end of DST on 2026-11-01:
        // it is 7 days and one hour long.
        let week = rule(PeriodKind::Week, 1, "America/New_York").containing(1_793_000_000);
        assert_eq!(week.key.render(), "week-2026-10-26");
        assert_eq!(week.end - week.start, 7 * 86_400 + 3_600);
    }

    #[test]
    fn months_from_an_anchor_day_clamp_to_short_months() {
        let billing = rule(PeriodKind::Month, 31, "UTC");
        // 2027-02-15: the period began on 2027-01-31 and ends when February's 28th begins.
        let p = billing.containing(1_802_649_600);
        assert_eq!(p.key.render(), "month-2027-01-31");
        assert_eq!(p.end, 1_803_772_800);
        let mid = rule(PeriodKind::Month, 15, "Asia/Tokyo");
        // 2026-11-14T15:00Z is 2026-11-15 00:00 in Tokyo.
        assert_eq!(
            mid.containing(1_794_668_400).key.render(),
            "month-2026-11-15"
        );
        assert_eq!(
            mid.containing(1_794_668_399).key.render(),
            "month-2026-10-15"
        );
        // Every expiry outlasts its period.
        for at in [1_794_668_400, 1_802_649_600] {
            for r in [&billing, &mid] {
                let p = r.containing(at);
                let midnight = p.key.over_by().midnight().assume_utc().unix_timestamp() as u64;
                assert!(midnight + 86_400 >= p.end, "{p:?}");
            }
        }
    }

    #[test]
    fn february_has_its_own_length() {
        // 2028-02-01T00:00:00Z -> 2028-03-01 (leap year, 29 days).
        assert_eq!(next_month_start(1_832_976_000) - 1_832_976_000, 29 * 86_400);
    }
}
