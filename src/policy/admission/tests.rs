//! Admission decided from facts alone: every case names its clock, scopes and counter values.

use time::macros::date;

use super::*;
use crate::policy::counters::{PeriodKey, PeriodKind};

// 2026-11-21T12:00:10Z, a Saturday.
const NOON_MS: u64 = 1_795_262_410_000;
const MINUTE: u64 = NOON_MS / 60_000;

fn team(id: &str) -> ScopeRules {
    ScopeRules {
        rpm: Some(10),
        tokens: Some(1_000),
        budget_micros: Some(100_000_000),
        ..ScopeRules::unlimited(Scope::Team(id.into()))
    }
}

fn user(team: &str, id: &str) -> Scope {
    Scope::User {
        team: team.into(),
        user: id.into(),
    }
}

fn month() -> PeriodKey {
    PeriodKey {
        kind: PeriodKind::Month,
        start: date!(2026 - 11 - 01),
    }
}

fn key(scope: &Scope, counted: Counted) -> CounterKey {
    CounterKey::new(scope.clone(), counted)
}

const CALL: Call<'static> = Call {
    requested: "gpt-4o-2024-08-06",
    model: "gpt-4o",
    estimate_micros: 2_000,
};

fn facts(scopes: &[ScopeRules]) -> Facts<'_> {
    Facts {
        now_ms: NOON_MS,
        scopes,
        call: Some(CALL),
        reserve: false,
        warn_at_percent: &[80, 100],
    }
}

fn decide(facts: &Facts<'_>, values: &[(CounterKey, u64)]) -> Decision {
    let (keys, values): (Vec<_>, Vec<_>) = values.iter().cloned().unzip();
    for k in &keys {
        assert!(facts.reads().contains(k), "{k:?} is not read");
    }
    facts.decide(&Values::new(&keys, &values))
}

/// Counter values as the engine hands them over.
fn read(values: &[(CounterKey, u64)]) -> Values {
    let (keys, values): (Vec<_>, Vec<_>) = values.iter().cloned().unzip();
    Values::new(&keys, &values)
}

fn refused(decision: Decision) -> Rejection {
    match decision {
        Decision::Refused(r) => r,
        Decision::Admitted(a) => panic!("admitted: {a:?}"),
    }
}

fn admitted(decision: Decision) -> Admitted {
    match decision {
        Decision::Admitted(a) => a,
        Decision::Refused(r) => panic!("refused: {r:?}"),
    }
}

#[test]
fn each_limit_refuses_in_its_scope_with_its_words() {
    let t = Scope::Team("platform".into());
    let alice = user("platform", "alice");
    let day = PeriodKey {
        kind: PeriodKind::Day,
        start: date!(2026 - 11 - 21),
    };
    let alice_rules = ScopeRules {
        tpm: Some(500),
        budget_micros: Some(5_000_000),
        model_caps: [("gpt-4o".to_owned(), 1_000_000)].into(),
        ..ScopeRules::unlimited(alice.clone())
    };
    let scopes = [team("platform"), alice_rules];
    // (counter values, kind, reason, scope named)
    type Case<'a> = (Vec<(CounterKey, u64)>, RejectionKind, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![(key(&t, Counted::Spend(month())), 100_000_000)],
            RejectionKind::MonthlyBudgetExceeded,
            "Monthly budget exceeded ($100.00/$100.00)",
            "team platform",
        ),
        (
            vec![(key(&alice, Counted::Spend(month())), 5_010_000)],
            RejectionKind::MonthlyBudgetExceeded,
            "user alice in team platform: Monthly budget exceeded ($5.01/$5.00)",
            "user alice in team platform",
        ),
        (
            vec![(
                key(&alice, Counted::ModelSpend(month(), "gpt-4o".into())),
                1_000_000,
            )],
            RejectionKind::ModelBudgetExceeded,
            "user alice in team platform: Monthly budget for model gpt-4o exceeded ($1.00/$1.00)",
            "user alice in team platform",
        ),
        (
            vec![(key(&t, Counted::Tokens(day)), 1_030)],
            RejectionKind::DailyTokensExceeded,
            "Daily token limit exceeded (1030/1000 tokens today)",
            "team platform",
        ),
        (
            vec![(key(&alice, Counted::TokensInMinute { minute: MINUTE }), 500)],
            RejectionKind::TpmExceeded,
            "user alice in team platform: TPM limit exceeded: 500 tokens in the last 60 s, limit 500",
            "user alice in team platform",
        ),
    ];
    for (values, kind, reason, scope) in cases {
        let r = refused(decide(&facts(&scopes), &values));
        assert_eq!((r.kind, r.reason.as_str()), (kind, reason));
        assert_eq!(r.scope.as_deref(), Some(scope));
        assert!(r.rate.is_some());
    }
}

#[test]
fn the_teammate_of_a_user_over_budget_is_admitted() {
    let alice = user("platform", "alice");
    let bob = user("platform", "bob");
    let member = |scope: Scope| ScopeRules {
        budget_micros: Some(1_000_000),
        ..ScopeRules::unlimited(scope)
    };
    let values = [(key(&alice, Counted::Spend(month())), 1_000_000)];
    let for_alice = [team("platform"), member(alice.clone())];
    assert_eq!(
        refused(decide(&facts(&for_alice), &values)).kind,
        RejectionKind::MonthlyBudgetExceeded
    );
    let for_bob = [team("platform"), member(bob)];
    let (keys, v): (Vec<_>, Vec<_>) = values.iter().cloned().unzip();
    admitted(facts(&for_bob).decide(&Values::new(&keys, &v)));
}

#[test]
fn the_org_ceiling_refuses_every_team() {
    let org = ScopeRules {
        budget_micros: Some(50_000_000),
        ..ScopeRules::unlimited(Scope::Org)
    };
    for id in ["platform", "search"] {
        let scopes = [org.clone(), team(id)];
        let r = refused(decide(
            &facts(&scopes),
            &[(key(&Scope::Org, Counted::Spend(month())), 50_000_000)],
        ));
        assert_eq!(r.reason, "org: Monthly budget exceeded ($50.00/$50.00)");
        assert_eq!(r.scope.as_deref(), Some("org"));
    }
}

#[test]
fn the_refusal_lasting_longest_is_named_across_scopes() {
    let alice = user("platform", "alice");
    let scopes = [
        team("platform"),
        ScopeRules {
            rpm: Some(1),
            ..ScopeRules::unlimited(alice.clone())
        },
    ];
    // Alice's RPM is spent (a minute) and the team's month is spent (days): the month is named.
    let r = refused(decide(
        &facts(&scopes),
        &[
            (key(&alice, Counted::Requests { minute: MINUTE }), 1),
            (
                key(&Scope::Team("platform".into()), Counted::Spend(month())),
                100_000_000,
            ),
        ],
    ));
    assert_eq!(r.kind, RejectionKind::MonthlyBudgetExceeded);
    assert_eq!(r.retry_after_secs, Some(9 * 86_400 + 12 * 3_600 - 10));
}

#[test]
fn adds_are_reservations_then_requests_each_within_its_scope() {
    let alice = user("platform", "alice");
    let scopes = [
        team("platform"),
        ScopeRules {
            rpm: Some(3),
            budget_micros: Some(10_000),
            ..ScopeRules::unlimited(alice.clone())
        },
    ];
    let mut f = facts(&scopes);
    f.reserve = true;
    let a = admitted(decide(
        &f,
        &[(key(&alice, Counted::Requests { minute: MINUTE - 1 }), 3)],
    ));
    let adds: Vec<_> = a
        .adds
        .iter()
        .map(|add| (add.key.clone(), add.amount, add.limit, add.is_reservation()))
        .collect();
    let t = Scope::Team("platform".into());
    assert_eq!(
        adds,
        vec![
            (
                key(&t, Counted::Reserved(month())),
                2_000,
                100_000_000,
                true
            ),
            (key(&alice, Counted::Reserved(month())), 2_000, 10_000, true),
            (key(&t, Counted::Requests { minute: MINUTE }), 1, 10, false),
            // 10 s into the minute, 5/6 of the previous minute's 3 requests still count.
            (
                key(&alice, Counted::Requests { minute: MINUTE }),
                1,
                0,
                false
            ),
        ]
    );
    // The add refused names its scope and what the counter held.
    let r = a.refused(&f, &a.adds[3], 0);
    assert_eq!(r.kind, RejectionKind::RpmExceeded);
    assert_eq!(
        r.reason,
        "user alice in team platform: RPM limit exceeded: 3 requests in the last 60 s, limit 3"
    );
    let r = a.refused(&f, &a.adds[1], 9_000);
    assert_eq!(
        r.reason,
        "user alice in team platform: Monthly budget exceeded ($0.009/$0.010)"
    );
    // Charged later: each scope's tokens (day and TPM-less) and spend (period and model).
    assert_eq!(a.charges.tokens.len(), 2);
    assert_eq!(a.charges.spend.len(), 4);
}

#[test]
fn headers_report_the_scope_with_the_least_room() {
    let alice = user("platform", "alice");
    let scopes = [
        team("platform"),
        ScopeRules {
            rpm: Some(4),
            tokens: Some(300),
            ..ScopeRules::unlimited(alice.clone())
        },
    ];
    let day = PeriodKey {
        kind: PeriodKind::Day,
        start: date!(2026 - 11 - 21),
    };
    let mut a = admitted(decide(
        &facts(&scopes),
        &[(key(&alice, Counted::Tokens(day)), 100)],
    ));
    assert_eq!(a.rate.tokens_limit, Some(300));
    assert_eq!(a.rate.tokens_remaining, Some(200));
    for add in a.adds.clone() {
        a.applied(&add, 1);
    }
    assert_eq!((a.rate.rpm_limit, a.rate.rpm_remaining), (4, 3));
}

#[test]
fn thresholds_cross_once_per_scope_and_period() {
    let alice = user("platform", "alice");
    let scopes = [
        team("platform"),
        ScopeRules {
            budget_micros: Some(1_000_000),
            ..ScopeRules::unlimited(alice.clone())
        },
    ];
    let values = [(key(&alice, Counted::Spend(month())), 850_000)];
    let a = admitted(decide(&facts(&scopes), &values));
    let crossings = facts(&scopes).crossings(&read(&values));
    assert_eq!(crossings.len(), 1);
    let c = &crossings[0];
    assert_eq!(
        (c.threshold, c.spent_micros, c.budget_micros),
        (80, 850_000, 1_000_000)
    );
    assert_eq!(c.marker.id(), "platform~user~alice#warned#2026-11#80");
    assert_eq!(c.period.end, 1_796_083_200);
    assert_eq!(
        a.warning.as_deref(),
        Some("user alice in team platform: 80% of the monthly budget used ($0.85/$1.00)")
    );
}

#[test]
fn warn_mode_admits_over_budget_with_a_warning_and_reaches_every_threshold() {
    let scopes = [ScopeRules {
        on_breach: OnBreach::Warn,
        ..team("platform")
    }];
    let values = [(
        key(&Scope::Team("platform".into()), Counted::Spend(month())),
        120_000_000,
    )];
    let a = admitted(decide(&facts(&scopes), &values));
    assert_eq!(
        a.warning.as_deref(),
        Some("Monthly budget exceeded ($120.00/$100.00)")
    );
    assert_eq!(a.overruns, vec![Scope::Team("platform".into())]);
    // Past 80 % and 100 % at once: both are reached, and reported.
    let crossings = facts(&scopes).crossings(&read(&values));
    let thresholds: Vec<u8> = crossings.iter().map(|c| c.threshold).collect();
    assert_eq!(thresholds, [80, 100]);
}

#[test]
fn a_budget_reached_refuses_and_its_thresholds_are_still_reached() {
    let scopes = [team("platform")];
    let spend = key(&Scope::Team("platform".into()), Counted::Spend(month()));
    let values = [(spend.clone(), 100_000_000)];
    refused(decide(&facts(&scopes), &values));
    let crossings = facts(&scopes).crossings(&read(&values));
    let thresholds: Vec<u8> = crossings.iter().map(|c| c.threshold).collect();
    assert_eq!(thresholds, [80, 100]);
    assert_eq!(crossings[1].time_zone, "UTC");
    // A zero budget has no percentages.
    let broke = [ScopeRules {
        budget_micros: Some(0),
        ..team("platform")
    }];
    assert!(facts(&broke).crossings(&read(&[(spend, 0)])).is_empty());
}

#[test]
fn a_model_the_scope_does_not_allow_is_refused_before_reading() {
    let scopes = [
        team("platform"),
        ScopeRules {
            allowed_models: Some(vec!["gpt-4o-mini".into()]),
            ..ScopeRules::unlimited(user("platform", "alice"))
        },
    ];
    let r = facts(&scopes).refuse_before_reading().unwrap();
    assert_eq!(r.kind, RejectionKind::ModelNotAllowed);
    assert_eq!(
        r.reason,
        "model \"gpt-4o-2024-08-06\" is not allowed for user alice in team platform"
    );
    assert_eq!(r.scope.as_deref(), Some("user alice in team platform"));
    assert!(facts(&scopes[..1]).refuse_before_reading().is_none());
}

#[test]
fn a_weekly_budget_in_berlin_rolls_over_at_its_local_monday_midnight() {
    let rule = PeriodRule {
        kind: PeriodKind::Week,
        anchor_day: 1,
        time_zone: PeriodRule::zone("Europe/Berlin").unwrap(),
    };
    let scopes = [ScopeRules {
        budget_micros: Some(1_000_000),
        budget_period: rule.clone(),
        ..ScopeRules::unlimited(Scope::Team("platform".into()))
    }];
    // Monday 2026-11-30 00:00 in Berlin is 2026-11-29T23:00Z.
    let boundary_ms = 1_795_993_200_000;
    let spent_week = PeriodKey {
        kind: PeriodKind::Week,
        start: date!(2026 - 11 - 23),
    };
    let values = [(
        key(&Scope::Team("platform".into()), Counted::Spend(spent_week)),
        1_000_000,
    )];
    let at = |now_ms| Facts {
        now_ms,
        ..facts(&scopes)
    };
    let (keys, v): (Vec<_>, Vec<_>) = values.iter().cloned().unzip();
    let r = refused(at(boundary_ms - 1_000).decide(&Values::new(&keys, &v)));
    assert_eq!(r.kind, RejectionKind::BudgetExceeded);
    assert_eq!(r.reason, "Weekly budget exceeded ($1.00/$1.00)");
    assert_eq!(r.retry_after_secs, Some(1));
    // One second later it is a new week in Berlin: a new counter, nothing reset.
    let a = admitted(at(boundary_ms).decide(&Values::new(&keys, &v)));
    assert!(
        a.charges
            .spend
            .iter()
            .any(|k| k.name() == "spend#week-2026-11-30")
    );
}

#[test]
fn a_scope_that_only_warns_reserves_nothing_and_is_not_refused_for_money() {
    let scopes = [ScopeRules {
        on_breach: OnBreach::Warn,
        ..team("platform")
    }];
    let mut f = facts(&scopes);
    f.reserve = true;
    let a = admitted(decide(
        &f,
        &[(
            key(&Scope::Team("platform".into()), Counted::Spend(month())),
            100_000_000,
        )],
    ));
    assert!(
        a.adds.iter().all(|add| !add.is_reservation()),
        "{:?}",
        a.adds
    );
    assert!(a.warning.unwrap().starts_with("Monthly budget exceeded"));
}
