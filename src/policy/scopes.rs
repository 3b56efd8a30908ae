//! Which scopes a request belongs to, and the limits each carries: the org above every team, the
//! team, the calling user inside it, and a project the caller names (if its team allows it).
//! Limits inherit downwards field by field: a user's own settings (a team's `users`), else the
//! team's `user_defaults`, else the global `[user_defaults]`. Every scope a request belongs to
//! is counted, with or without limits, so usage per scope can be reported.

use jiff::tz::TimeZone;

use super::admission::ScopeRules;
use super::counters::Scope;
use super::decision::{Rejection, RejectionKind};
use super::limits::{ScopeLimits, Team, TierTable};

/// The configured limits above and below teams.
#[derive(Clone, Debug)]
pub struct ScopeSettings {
    /// Limits of the whole deployment; `None`: no org scope is counted.
    pub org: Option<ScopeLimits>,
    /// Limits of every user of every team, unless a team says otherwise.
    pub user_defaults: ScopeLimits,
    /// Periods without their own time zone run in this one.
    pub time_zone: TimeZone,
    /// Count every identified user as a scope (`identity.user_claim` is set), even without
    /// limits of their own, for usage per user. Otherwise users are scopes only where user limits
    /// are configured, and a deployment without any counts what it always counted.
    pub count_users: bool,
}

impl Default for ScopeSettings {
    fn default() -> Self {
        Self {
            org: None,
            user_defaults: ScopeLimits::default(),
            time_zone: TimeZone::UTC,
            count_users: false,
        }
    }
}

/// A request named a project its team does not list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectNotAllowed {
    pub team: String,
    pub project: String,
}

impl From<ProjectNotAllowed> for Rejection {
    fn from(e: ProjectNotAllowed) -> Self {
        let ProjectNotAllowed { team, project } = e;
        Rejection::new(
            RejectionKind::Forbidden,
            format!(
                "project {project:?} is not allowed for team {team:?}; a tollgate admin can allow it (projects.{project} in the team's configuration, or PUT /admin/teams/{team}/projects/{project})"
            ),
        )
    }
}

/// Who a request is for: a team, and within it perhaps a user and a project.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    pub team: &'a Team,
    pub user: Option<&'a str>,
    pub project: Option<&'a str>,
}

impl<'a> From<&'a Team> for Member<'a> {
    fn from(team: &'a Team) -> Self {
        Member {
            team,
            user: None,
            project: None,
        }
    }
}

impl<'a> From<&'a std::sync::Arc<Team>> for Member<'a> {
    fn from(team: &'a std::sync::Arc<Team>) -> Self {
        Self::from(team.as_ref())
    }
}

impl ScopeSettings {
    /// The rules of every scope `member` belongs to, broadest first. A project its team does not
    /// list is refused: deny by default, with how to allow it.
    pub fn chain(
        &self,
        tiers: &TierTable,
        member: Member<'_>,
    ) -> Result<Vec<ScopeRules>, ProjectNotAllowed> {
        let team = member.team;
        let zone = &self.time_zone;
        let mut chain = Vec::with_capacity(4);
        if let Some(org) = &self.org {
            chain.push(org.rules(Scope::Org, zone));
        }
        chain.push(tiers.rules_for(team, zone));
        let users_limited = self.user_defaults != ScopeLimits::default()
            || team.user_defaults.is_some()
            || !team.users.is_empty();
        if let Some(user) = member
            .user
            .filter(|u| !u.is_empty() && (self.count_users || users_limited))
        {
            let defaults = match &team.user_defaults {
                Some(team_defaults) => team_defaults.over(&self.user_defaults),
                None => self.user_defaults.clone(),
            };
            let limits = match team.users.get(user) {
                Some(own) => own.over(&defaults),
                None => defaults,
            };
            chain.push(limits.rules(
                Scope::User {
                    team: team.id.clone(),
                    user: user.to_owned(),
                },
                zone,
            ));
        }
        if let Some(project) = member.project {
            let Some(limits) = team.projects.get(project) else {
                return Err(ProjectNotAllowed {
                    team: team.id.clone(),
                    project: project.to_owned(),
                });
            };
            chain.push(limits.rules(
                Scope::Project {
                    team: team.id.clone(),
                    project: project.to_owned(),
                },
                zone,
            ));
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Tier;
    use crate::policy::counters::PeriodKind;
    use crate::policy::limits::PeriodSpec;

    fn limits(rpm: Option<u64>, budget_usd: Option<f64>) -> ScopeLimits {
        ScopeLimits {
            rpm,
            budget_usd,
            ..Default::default()
        }
    }

    #[test]
    fn user_limits_inherit_field_by_field() {
        let mut team = Team::new("platform", Tier::Standard);
        team.user_defaults = Some(ScopeLimits {
            budget_period: Some(PeriodSpec {
                every: PeriodKind::Week,
                anchor_day: None,
                time_zone: Some("Europe/Berlin".into()),
            }),
            ..limits(None, Some(20.0))
        });
        team.users.insert("alice".into(), limits(None, Some(50.0)));
        let settings = ScopeSettings {
            org: Some(limits(None, Some(10_000.0))),
            user_defaults: limits(Some(30), Some(5.0)),
            ..Default::default()
        };
        let chain = |user| {
            settings
                .chain(
                    &TierTable::default(),
                    Member {
                        team: &team,
                        user,
                        project: None,
                    },
                )
                .unwrap()
        };
        let alice = chain(Some("alice"));
        let kinds: Vec<_> = alice.iter().map(|r| r.scope.kind()).collect();
        assert_eq!(kinds, ["org", "team", "user"]);
        // Alice: her own budget, the team's period, the global RPM.
        assert_eq!(alice[2].budget_micros, Some(50_000_000));
        assert_eq!(alice[2].budget_period.kind, PeriodKind::Week);
        assert_eq!(alice[2].rpm, Some(30));
        // Bob has no entry: the team's defaults over the global ones.
        let bob = chain(Some("bob"));
        assert_eq!(bob[2].budget_micros, Some(20_000_000));
        assert_eq!(bob[2].scope.label(), "user bob in team platform");
        // No user claim: no user scope.
        assert_eq!(chain(None).len(), 2);
    }

    #[test]
    fn users_are_scopes_where_they_are_counted_or_limited() {
        let team = Team::new("platform", Tier::Standard);
        let kinds = |settings: &ScopeSettings| -> Vec<&'static str> {
            settings
                .chain(
                    &TierTable::default(),
                    Member {
                        team: &team,
                        user: Some("alice"),
                        project: None,
                    },
                )
                .unwrap()
                .iter()
                .map(|r| r.scope.kind())
                .collect()
        };
        // A deployment that configures nothing about users counts teams, as it always did.
        assert_eq!(kinds(&ScopeSettings::default()), ["team"]);
        let counted = ScopeSettings {
            count_users: true,
            ..Default::default()
        };
        assert_eq!(kinds(&counted), ["team", "user"]);
        let limited = ScopeSettings {
            user_defaults: limits(Some(10), None),
            ..Default::default()
        };
        assert_eq!(kinds(&limited), ["team", "user"]);
    }

    #[test]
    fn only_projects_the_team_lists_are_admitted() {
        let mut team = Team::new("platform", Tier::Standard);
        team.projects.insert("search".into(), limits(Some(5), None));
        let settings = ScopeSettings::default();
        let chain = |project| {
            settings.chain(
                &TierTable::default(),
                Member {
                    team: &team,
                    user: None,
                    project: Some(project),
                },
            )
        };
        let ok = chain("search").unwrap();
        assert_eq!(ok.last().unwrap().rpm, Some(5));
        let refused = Rejection::from(chain("other").unwrap_err());
        assert_eq!(refused.kind, RejectionKind::Forbidden);
        assert!(
            refused
                .reason
                .contains("PUT /admin/teams/platform/projects/other")
        );
    }
}
