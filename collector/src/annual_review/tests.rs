use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

#[test]
fn percentiles_by_nearest_rank() {
    // (name, values, p, want)
    let table: &[(&str, &[i64], u32, Option<i64>)] = &[
        ("empty", &[], 50, None),
        ("empty p90", &[], 90, None),
        ("one value is every percentile", &[7], 50, Some(7)),
        ("one value p90", &[7], 90, Some(7)),
        ("two values: the lower middle", &[10, 20], 50, Some(10)),
        ("two values p90", &[10, 20], 90, Some(20)),
        ("odd count median", &[3, 1, 2], 50, Some(2)),
        ("unsorted input", &[50, 10, 40, 20, 30], 50, Some(30)),
        (
            "ten values p90 is the ninth",
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            90,
            Some(9),
        ),
        (
            "eleven values p90 is the tenth",
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            90,
            Some(10),
        ),
        ("p100 is the largest", &[5, 1, 9], 100, Some(9)),
        ("ties", &[4, 4, 4, 4], 90, Some(4)),
        ("p0 is refused", &[1, 2], 0, None),
        ("p over 100 is refused", &[1, 2], 101, None),
    ];
    for (name, values, p, want) in table {
        assert_eq!(percentile(values, *p), *want, "{name}");
    }
}

#[test]
fn months_are_local_and_clipped_to_the_period() {
    let london = TimeZone::get("Europe/London").unwrap();
    // (name, from, to, want labels)
    let table: &[(&str, &str, &str, &[&str])] = &[
        (
            "inside one month",
            "2026-03-05T00:00:00Z",
            "2026-03-06T00:00:00Z",
            &["2026-03"],
        ),
        (
            "across a year end",
            "2025-11-15T00:00:00Z",
            "2026-01-02T00:00:00Z",
            &["2025-11", "2025-12", "2026-01"],
        ),
        (
            // 23:30 UTC on 31 May is 00:30 on 1 June in London (BST).
            "the local month, not UTC's",
            "2026-05-31T23:30:00Z",
            "2026-06-02T00:00:00Z",
            &["2026-06"],
        ),
    ];
    for (name, from, to, want) in table {
        let period = Period::new(at(from), at(to)).unwrap();
        let got = months(period, &london);
        let labels: Vec<&str> = got.iter().map(|(l, _, _)| l.as_str()).collect();
        assert_eq!(labels, *want, "{name}");
        assert_eq!(got.first().unwrap().1, period.from, "{name}: clipped start");
        assert_eq!(got.last().unwrap().2, period.to, "{name}: clipped end");
        for pair in got.windows(2) {
            assert_eq!(pair[0].2, pair[1].1, "{name}: months are contiguous");
        }
    }
}

#[test]
fn periods_are_checked() {
    let t = at("2026-01-01T00:00:00Z");
    assert_eq!(Period::new(t, t), Err(PeriodError::Backwards));
    assert!(Period::new(t, t + SignedDuration::from_hours(24 * 4 * 366)).is_err());
    assert!(Period::new(t, t + SignedDuration::from_hours(24 * 365)).is_ok());
    let year = Period::last_year(t);
    assert_eq!(year.to, t);
    assert!(year.contains(year.from) && !year.contains(year.to));
}

fn capture(at_text: &str, account: &str, severity: i64) -> CaptureFact {
    CaptureFact {
        occurred_at: at(at_text),
        device: "dev-1".into(),
        account: account.into(),
        staff: false,
        category: "bullying".into(),
        rule_id: "bullying-1".into(),
        severity,
        grade: None,
        status: CaptureStatus::New,
        first_review_ms: None,
    }
}

fn input(period: Period) -> ReviewInput {
    ReviewInput {
        sites: vec!["Cabot".into()],
        timezone: "Europe/London".into(),
        period,
        generated_at: period.to,
        reporting_days: 7,
        coverage: CoverageFacts::default(),
        activity_now: vec![],
        mfa_now: vec![],
        signals: vec![],
        flags: vec![],
        captures: vec![],
        incidents: vec![],
        accounts: vec![],
    }
}

#[test]
fn an_empty_period_has_zero_figures_and_no_times() {
    let period = Period::new(at("2026-01-01T00:00:00Z"), at("2026-03-01T00:00:00Z")).unwrap();
    let review = build(&input(period));
    assert_eq!(review.schema, SCHEMA);
    assert_eq!(review.captures.total, 0);
    assert_eq!(review.review.median_ms, None);
    assert_eq!(review.review.p90_ms, None);
    assert_eq!(review.incidents.opened, 0);
    assert_eq!(review.accounts_affected.pupils, 0);
    assert_eq!(review.compliance.months.len(), 2);
    assert!(
        review
            .compliance
            .months
            .iter()
            .all(|m| m.inactive_opened == 0)
    );
    // Every review state is listed, even at zero, so a reader sees none
    // was missed.
    assert_eq!(review.review.outcomes.len(), CaptureStatus::ALL.len());
}

#[test]
fn the_figures_of_a_period() {
    let period = Period::new(at("2026-01-01T00:00:00Z"), at("2026-03-01T00:00:00Z")).unwrap();
    let mut i = input(period);
    i.signals = vec![("stopped_uncleanly".into(), 2)];
    i.coverage = CoverageFacts {
        enrolled: 10,
        reporting: 8,
        helpers_missing: 1,
    };
    let mut regraded = capture("2026-01-10T10:00:00Z", "pupil1", 2);
    regraded.grade = Some(5);
    regraded.status = CaptureStatus::Concern;
    regraded.first_review_ms = Some(60_000);
    let mut reviewed = capture("2026-02-10T10:00:00Z", "pupil2", 3);
    reviewed.status = CaptureStatus::FalsePositive;
    reviewed.first_review_ms = Some(3_600_000);
    let mut by_staff = capture("2026-02-11T10:00:00Z", "teacher1", 3);
    by_staff.staff = true;
    i.captures = vec![
        regraded,
        reviewed,
        by_staff,
        capture("2026-02-12T10:00:00Z", "pupil1", 3),
        // Outside the period: not counted.
        capture("2026-03-02T10:00:00Z", "pupil3", 3),
    ];
    i.flags = vec![
        FlagSpan {
            kind: "device_inactive".into(),
            opened_at: at("2026-01-05T00:00:00Z"),
            closed_at: Some(at("2026-02-03T00:00:00Z")),
        },
        FlagSpan {
            kind: "mfa_stale".into(),
            opened_at: at("2025-12-20T00:00:00Z"),
            closed_at: None,
        },
        FlagSpan {
            kind: "tamper".into(),
            opened_at: at("2026-02-01T00:00:00Z"),
            closed_at: None,
        },
    ];
    i.incidents = vec![
        IncidentFact {
            opened_at: at("2026-01-10T10:00:00Z"),
            category: "bullying".into(),
            severity: 2,
            closed_at: Some(at("2026-01-11T00:00:00Z")),
        },
        IncidentFact {
            opened_at: at("2025-12-01T00:00:00Z"),
            category: "drugs".into(),
            severity: 4,
            closed_at: None,
        },
    ];
    i.accounts = vec![
        AccessFact {
            username: "dsl".into(),
            role: ConsoleRole::Dsl,
        },
        AccessFact {
            username: "tech".into(),
            role: ConsoleRole::Technician,
        },
        AccessFact {
            username: "gov".into(),
            role: ConsoleRole::Governor,
        },
    ];
    let review = build(&i);

    assert_eq!(review.coverage.silent, 2);
    assert_eq!(review.coverage.helpers_running, 7);
    assert_eq!(review.coverage.tamper_flags, 1);
    assert_eq!(
        review.coverage.agent_signals,
        [Count {
            key: "stopped_uncleanly".into(),
            count: 2
        }]
    );
    assert_eq!(review.captures.total, 4);
    let grade = |n: &str| {
        review
            .captures
            .by_grade
            .iter()
            .find(|c| c.key == n)
            .map(|c| c.count)
    };
    assert_eq!(grade("5"), Some(1), "the DSL's regrade counts");
    assert_eq!(grade("2"), None, "not the pregrade it replaced");
    assert_eq!(grade("3"), Some(3));
    let alerted_2 = review
        .freedom_of_information
        .alerts_by_severity
        .iter()
        .find(|c| c.key == "2");
    assert_eq!(alerted_2.map(|c| c.count), Some(1), "FOI: as raised");
    assert_eq!(review.accounts_affected.pupils, 2);
    assert_eq!(review.accounts_affected.staff, 1);
    assert_eq!(review.review.reviewed, 2);
    assert_eq!(review.review.not_reviewed, 2);
    assert_eq!(review.review.median_ms, Some(60_000));
    assert_eq!(review.review.p90_ms, Some(3_600_000));
    assert_eq!(review.incidents.opened, 1);
    assert_eq!(review.incidents.open_at_end, 1);

    let [jan, feb] = review.compliance.months.as_slice() else {
        panic!("two months: {:?}", review.compliance.months)
    };
    assert_eq!((jan.inactive_opened, jan.inactive_at_end), (1, 1));
    assert_eq!((feb.inactive_opened, feb.inactive_at_end), (0, 0));
    assert_eq!((jan.mfa_stale_opened, jan.mfa_stale_at_end), (0, 1));
    assert_eq!(feb.mfa_stale_at_end, 1);

    assert_eq!(review.freedom_of_information.staff_accounts_with_access, 3);
    assert_eq!(
        review.freedom_of_information.staff_accounts_seeing_captures,
        1
    );
    // Counts only: no pupil's account anywhere in the document.
    let json = serde_json::to_string(&review).unwrap();
    for pupil in ["pupil1", "pupil2", "teacher1"] {
        assert!(!json.contains(pupil), "{pupil} in {json}");
    }
}

#[test]
fn durations_in_words() {
    for (ms, want) in [
        (0, "0 s"),
        (45_000, "45 s"),
        (60_000, "1 min"),
        (12_000_000, "3 h 20 min"),
        (90_000_000, "1 d 1 h"),
        (-5, "0 s"),
    ] {
        assert_eq!(duration_words(ms), want, "{ms}");
    }
}
