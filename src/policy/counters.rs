//! What tollgate counts, for whom and over which period: the one definition of a counter key.
//! Stores keep a key as two strings, a partition (the scope) and a counter name (what and when);
//! [`CounterKey::render`] writes them and [`CounterKey::parse`] reads them back, and nothing else
//! builds or takes apart those strings.
//!
//! The strings of a team's counters are the ones tollgate has always written (`rpm#29596740`,
//! `tokens#2026-11-21`, `spend#2026-11#gpt-4o` in partition `platform`), so redb files, DynamoDB
//! items, journals and spools written before keys were typed are read as they are. Scopes other
//! than a team use partitions a team id cannot spell (team ids never contain `~`).

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month};

/// Who a counter belongs to. A request belongs to several (its org, team, user, project).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The whole deployment: a ceiling above every team.
    Org,
    Team(String),
    /// A caller inside a team: user ids are unique per team, not across teams.
    User {
        team: String,
        user: String,
    },
    /// A project inside a team, named by a request header the team allows.
    Project {
        team: String,
        project: String,
    },
}

const ORG_PARTITION: &str = "~org";

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Team(_) => "team",
            Scope::User { .. } => "user",
            Scope::Project { .. } => "project",
        }
    }

    /// The scope's own id (the team id for a team, the user id for a user).
    pub fn id(&self) -> &str {
        match self {
            Scope::Org => "org",
            Scope::Team(team) => team,
            Scope::User { user, .. } => user,
            Scope::Project { project, .. } => project,
        }
    }

    /// How a refusal names the scope: `team platform`, `user alice in team platform`.
    pub fn label(&self) -> String {
        match self {
            Scope::Org => "org".to_owned(),
            Scope::Team(team) => format!("team {team}"),
            Scope::User { team, user } => format!("user {user} in team {team}"),
            Scope::Project { team, project } => format!("project {project} in team {team}"),
        }
    }

    /// The store partition of the scope's counters. A team's is its id, as it always was.
    pub fn partition(&self) -> String {
        match self {
            Scope::Org => ORG_PARTITION.to_owned(),
            Scope::Team(team) => team.clone(),
            Scope::User { team, user } => format!("{team}~user~{}", escape(user)),
            Scope::Project { team, project } => format!("{team}~project~{}", escape(project)),
        }
    }

    pub fn parse_partition(partition: &str) -> Option<Self> {
        if partition == ORG_PARTITION {
            return Some(Scope::Org);
        }
        let mut parts = partition.splitn(3, '~');
        let team = parts.next()?.to_owned();
        if team.is_empty() {
            return None;
        }
        match (parts.next(), parts.next()) {
            (None, None) => Some(Scope::Team(team)),
            (Some("user"), Some(user)) => Some(Scope::User {
                team,
                user: unescape(user)?,
            }),
            (Some("project"), Some(project)) => Some(Scope::Project {
                team,
                project: unescape(project)?,
            }),
            _ => None,
        }
    }
}

/// User and project ids come from tokens and headers: anything that could be read as a
/// separator (`#`, `~`) or is not plain text is percent-encoded.
fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How long a budget or token period lasts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    Day,
    Week,
    #[default]
    Month,
}

/// One period of a budget or token limit, by its first local date. Its name in a counter is the
/// date it starts (`2026-11-21` a day, `2026-11` a month from the 1st, `week-2026-11-23`,
/// `month-2026-11-15` a month from an anchor day): a new period is a new counter, so nothing has
/// to reset anything, and the spend of past periods stays readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeriodKey {
    pub kind: PeriodKind,
    /// The local date the period starts on.
    pub start: Date,
}

impl PeriodKey {
    pub fn render(&self) -> String {
        let date = |d: Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        match self.kind {
            PeriodKind::Day => date(self.start),
            PeriodKind::Month if self.start.day() == 1 => {
                format!(
                    "{:04}-{:02}",
                    self.start.year(),
                    u8::from(self.start.month())
                )
            }
            PeriodKind::Month => format!("month-{}", date(self.start)),
            PeriodKind::Week => format!("week-{}", date(self.start)),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let date = |t: &str| -> Option<Date> {
            let mut parts = t.split('-');
            let year = parts.next()?.parse().ok()?;
            let month = Month::try_from(parts.next()?.parse::<u8>().ok()?).ok()?;
            let day = parts.next()?.parse().ok()?;
            if parts.next().is_some() {
                return None;
            }
            Date::from_calendar_date(year, month, day).ok()
        };
        if let Some(rest) = text.strip_prefix("week-") {
            return Some(Self {
                kind: PeriodKind::Week,
                start: date(rest)?,
            });
        }
        if let Some(rest) = text.strip_prefix("month-") {
            return Some(Self {
                kind: PeriodKind::Month,
                start: date(rest)?,
            });
        }
        match text.matches('-').count() {
            1 => Some(Self {
                kind: PeriodKind::Month,
                start: date(&format!("{text}-01"))?,
            }),
            2 => Some(Self {
                kind: PeriodKind::Day,
                start: date(text)?,
            }),
            _ => None,
        }
    }

    /// A local date by which the period is over: the day after its last for days, weeks and
    /// months from the 1st; for a month from an anchor day (whose length depends on the anchor,
    /// which the key does not name) 31 days on, never before its end. Sets counters' expiry.
    pub fn over_by(&self) -> Date {
        let days = |n| {
            self.start
                .checked_add(Duration::days(n))
                .unwrap_or(Date::MAX)
        };
        match self.kind {
            PeriodKind::Day => days(1),
            PeriodKind::Week => days(7),
            PeriodKind::Month if self.start.day() == 1 => {
                let (year, month) = match self.start.month() {
                    Month::December => (self.start.year() + 1, Month::January),
                    m => (self.start.year(), m.next()),
                };
                Date::from_calendar_date(year, month, 1).unwrap_or(Date::MAX)
            }
            PeriodKind::Month => days(31),
        }
    }
}

/// What a counter counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counted {
    /// Requests admitted in one UTC minute (a bucket of the sliding RPM window).
    Requests { minute: u64 },
    /// Tokens used by requests admitted in one UTC minute (a bucket of the TPM window).
    TokensInMinute { minute: u64 },
    /// Tokens used in a period.
    Tokens(PeriodKey),
    /// USD spent in a period, micro-dollars.
    Spend(PeriodKey),
    /// USD spent on one model (canonical name) in a period, micro-dollars.
    ModelSpend(PeriodKey, String),
    /// Cost reserved by admitted requests whose usage is not known yet, micro-dollars.
    Reserved(PeriodKey),
    /// 0 or 1: whether a budget threshold (percent) was reported for a period.
    Warned(PeriodKey, u8),
    /// 0 or 1: whether an admin adjustment with this client-supplied id was applied.
    Adjusted(String),
}

impl Counted {
    /// The counter's name in the store.
    pub fn render(&self) -> String {
        match self {
            Counted::Requests { minute } => format!("rpm#{minute}"),
            Counted::TokensInMinute { minute } => format!("tpm#{minute}"),
            Counted::Tokens(p) => format!("tokens#{}", p.render()),
            Counted::Spend(p) => format!("spend#{}", p.render()),
            Counted::ModelSpend(p, model) => format!("spend#{}#{model}", p.render()),
            Counted::Reserved(p) => format!("reserved#{}", p.render()),
            Counted::Warned(p, threshold) => format!("warned#{}#{threshold}", p.render()),
            Counted::Adjusted(id) => format!("adjusted#{}", escape(id)),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        let (what, rest) = name.split_once('#')?;
        Some(match what {
            "rpm" => Counted::Requests {
                minute: rest.parse().ok()?,
            },
            "tpm" => Counted::TokensInMinute {
                minute: rest.parse().ok()?,
            },
            "tokens" => Counted::Tokens(PeriodKey::parse(rest)?),
            "spend" => match rest.split_once('#') {
                None => Counted::Spend(PeriodKey::parse(rest)?),
                Some((period, model)) => {
                    Counted::ModelSpend(PeriodKey::parse(period)?, model.to_owned())
                }
            },
            "reserved" => Counted::Reserved(PeriodKey::parse(rest)?),
            "warned" => {
                let (period, threshold) = rest.split_once('#')?;
                Counted::Warned(PeriodKey::parse(period)?, threshold.parse().ok()?)
            }
            "adjusted" => Counted::Adjusted(unescape(rest)?),
            _ => return None,
        })
    }
}

/// Spend counters are kept this long after their period, for usage history.
const SPEND_RETENTION_SECS: u64 = 400 * 86_400;
/// Token and reservation counters outlive their period by a day, so late debits and operators
/// still see them. A period in a time zone ahead of or behind UTC ends within a day of its UTC
/// date, so this also covers the offset.
const PERIOD_GRACE_SECS: u64 = 86_400;
/// Adjustment markers are kept this long: a client retrying an adjustment within it is told it
/// was applied, not charged twice.
const ADJUSTMENT_MEMORY_SECS: u64 = 400 * 86_400;

/// A counter of one scope for one period. Expired counters may be deleted by the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "StoredKey", into = "StoredKey")]
pub struct CounterKey {
    pub scope: Scope,
    pub counted: Counted,
    /// Unix seconds after which the counter no longer matters.
    pub expires_at: u64,
}

/// A key as journals and spools have always written it.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    team: String,
    counter: String,
    expires_at: u64,
}

impl From<CounterKey> for StoredKey {
    fn from(key: CounterKey) -> Self {
        Self {
            team: key.partition(),
            counter: key.name(),
            expires_at: key.expires_at,
        }
    }
}

impl TryFrom<StoredKey> for CounterKey {
    type Error = String;

    fn try_from(stored: StoredKey) -> Result<Self, String> {
        CounterKey::parse(&stored.team, &stored.counter, stored.expires_at)
            .ok_or_else(|| format!("unknown counter {:?}#{:?}", stored.team, stored.counter))
    }
}

/// Unix seconds of UTC midnight starting `date`.
fn utc_midnight(date: Date) -> u64 {
    date.midnight().assume_utc().unix_timestamp().max(0) as u64
}

impl CounterKey {
    /// A key that expires when its period's counters expire (see the retention constants).
    pub fn new(scope: Scope, counted: Counted) -> Self {
        let expires_at = match &counted {
            // A bucket counts for its minute and, weighted, the next one.
            Counted::Requests { minute } | Counted::TokensInMinute { minute } => (minute + 2) * 60,
            Counted::Tokens(p) | Counted::Reserved(p) => {
                utc_midnight(p.over_by()) + PERIOD_GRACE_SECS
            }
            Counted::Spend(p) | Counted::ModelSpend(p, _) | Counted::Warned(p, _) => {
                utc_midnight(p.over_by()) + SPEND_RETENTION_SECS
            }
            Counted::Adjusted(_) => u64::MAX / 2,
        };
        Self {
            scope,
            counted,
            expires_at,
        }
    }

    /// An adjustment marker, kept [`ADJUSTMENT_MEMORY_SECS`] from `now`.
    pub fn adjustment(scope: Scope, id: &str, now: u64) -> Self {
        Self {
            scope,
            counted: Counted::Adjusted(id.to_owned()),
            expires_at: now + ADJUSTMENT_MEMORY_SECS,
        }
    }

    pub fn team(team: &str, counted: Counted) -> Self {
        Self::new(Scope::Team(team.to_owned()), counted)
    }

    /// The key a store holds as (`partition`, `name`).
    pub fn parse(partition: &str, name: &str, expires_at: u64) -> Option<Self> {
        Some(Self {
            scope: Scope::parse_partition(partition)?,
            counted: Counted::parse(name)?,
            expires_at,
        })
    }

    /// The store partition (the scope).
    pub fn partition(&self) -> String {
        self.scope.partition()
    }

    /// The counter's name within its partition (what and when).
    pub fn name(&self) -> String {
        self.counted.render()
    }

    /// Flat identity for key-value backends: `partition#name`.
    pub fn id(&self) -> String {
        format!("{}#{}", self.partition(), self.name())
    }

    /// The minute of a requests-per-minute bucket; `None` for other counters.
    pub fn rpm_minute(&self) -> Option<u64> {
        match self.counted {
            Counted::Requests { minute } => Some(minute),
            _ => None,
        }
    }

    /// Counters that admission adds to before a call (RPM buckets, budget reservations): the
    /// ones a quota lease may serve from a slice claimed in advance.
    pub fn is_claimed_at_admission(&self) -> bool {
        matches!(
            self.counted,
            Counted::Requests { .. } | Counted::Reserved(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn round_trip(key: &CounterKey) {
        let parsed = CounterKey::parse(&key.partition(), &key.name(), key.expires_at).unwrap();
        assert_eq!(&parsed, key);
    }

    #[test]
    fn team_counters_keep_the_names_already_in_stores() {
        let month = PeriodKey {
            kind: PeriodKind::Month,
            start: date!(2026 - 11 - 01),
        };
        let day = PeriodKey {
            kind: PeriodKind::Day,
            start: date!(2026 - 11 - 21),
        };
        let cases = [
            (Counted::Requests { minute: 29_596_740 }, "rpm#29596740"),
            (Counted::Tokens(day), "tokens#2026-11-21"),
            (Counted::Spend(month), "spend#2026-11"),
            (
                Counted::ModelSpend(month, "gpt-4o".into()),
                "spend#2026-11#gpt-4o",
            ),
            (Counted::Reserved(month), "reserved#2026-11"),
            (Counted::Warned(month, 80), "warned#2026-11#80"),
        ];
        for (counted, name) in cases {
            let key = CounterKey::team("platform", counted);
            assert_eq!(key.partition(), "platform");
            assert_eq!(key.name(), name);
            assert_eq!(key.id(), format!("platform#{name}"));
            round_trip(&key);
        }
    }

    #[test]
    fn expiry_matches_what_the_engine_always_wrote() {
        // 2026-11-21: tokens kept to the end of the next day, spend 400 days past the month.
        let day = PeriodKey::parse("2026-11-21").unwrap();
        let key = CounterKey::team("t", Counted::Tokens(day));
        assert_eq!(key.expires_at, 1_795_305_600 + 86_400);
        let month = PeriodKey::parse("2026-11").unwrap();
        let key = CounterKey::team("t", Counted::Spend(month));
        assert_eq!(key.expires_at, 1_796_083_200 + 400 * 86_400);
        let key = CounterKey::team("t", Counted::Requests { minute: 100 });
        assert_eq!(key.expires_at, 102 * 60);
    }

    #[test]
    fn other_scopes_and_periods_round_trip() {
        let week = PeriodKey {
            kind: PeriodKind::Week,
            start: date!(2026 - 11 - 23),
        };
        let anchored = PeriodKey {
            kind: PeriodKind::Month,
            start: date!(2026 - 11 - 15),
        };
        assert_eq!(week.render(), "week-2026-11-23");
        assert_eq!(anchored.render(), "month-2026-11-15");
        assert_eq!(week.over_by(), date!(2026 - 11 - 30));
        assert_eq!(anchored.over_by(), date!(2026 - 12 - 16));
        for scope in [
            Scope::Org,
            Scope::Team("platform".into()),
            Scope::User {
                team: "platform".into(),
                user: "alice@example.com".into(),
            },
            Scope::User {
                team: "platform".into(),
                user: "odd#user~name %".into(),
            },
            Scope::Project {
                team: "platform".into(),
                project: "search".into(),
            },
        ] {
            for counted in [
                Counted::Spend(week),
                Counted::ModelSpend(anchored, "claude-haiku-4-5".into()),
                Counted::TokensInMinute { minute: 7 },
                Counted::Adjusted("op-1#x".into()),
            ] {
                round_trip(&CounterKey::new(scope.clone(), counted));
            }
        }
        assert_eq!(
            Scope::User {
                team: "platform".into(),
                user: "a#b".into()
            }
            .partition(),
            "platform~user~a%23b"
        );
        assert!(CounterKey::parse("t", "nonsense#1", 0).is_none());
        assert!(CounterKey::parse("t", "tokens#2026-13-01", 0).is_none());
    }

    #[test]
    fn journals_keep_their_shape() {
        let key = CounterKey::team("t", Counted::Requests { minute: 1 });
        let json = serde_json::to_value(&key).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"team": "t", "counter": "rpm#1", "expires_at": 180})
        );
        let back: CounterKey = serde_json::from_value(json).unwrap();
        assert_eq!(back, key);
    }
}
