use super::*;

fn plan() -> ChaosPlan {
    ChaosPlan {
        duration: Duration::from_secs(80),
        rate: 150.0,
        seed: 3,
        faults_per_minute: 45.0,
        two_at_once: 0.3,
        deadline: Duration::from_secs(2),
        slack: Duration::from_secs(5),
        warmup: Duration::from_secs(3),
        cooldown: Duration::from_secs(3),
        max_hold: Duration::from_millis(1500),
    }
}

#[test]
fn the_schedule_is_seeded_sized_and_never_overlaps() {
    let p = plan();
    let s = schedule(&p, 3, 1);
    assert_eq!(s, schedule(&p, 3, 1), "same seed, same faults");
    assert_ne!(
        s,
        schedule(
            &ChaosPlan {
                seed: 4,
                ..p.clone()
            },
            3,
            1
        )
    );
    // 74 s of faults at 45 a minute.
    assert_eq!(s.len(), 55);
    let pairs = s.iter().filter(|f| f.hits.len() == 2).count();
    assert!((5..=30).contains(&pairs), "{pairs} two-at-once faults");
    let two_models = s
        .iter()
        .filter(|f| f.hits.len() == 2 && f.hits.iter().all(|h| h.0 < 3))
        .count();
    assert!(
        two_models >= 2 && pairs - two_models >= 2,
        "{two_models} of {pairs} pairs hit two models"
    );
    assert!(
        s.iter()
            .any(|f| f.hits.iter().any(|h| h.1 == FaultKind::Kill))
    );
    assert!(
        s.iter()
            .any(|f| f.hits.iter().any(|h| h.1 == FaultKind::Pause))
    );
    for f in &s {
        assert!(f.at >= p.warmup && f.at + f.hold <= p.duration - p.cooldown);
        assert!(f.hold <= p.max_hold && f.hold > Duration::ZERO);
        assert!(f.hits.iter().all(|h| h.0 < 4));
        if let [(a, _), (b, _)] = f.hits[..] {
            assert_ne!(a, b, "two distinct workers");
        }
    }
    for w in s.windows(2) {
        assert!(w[0].at + w[0].hold < w[1].at, "one fault at a time");
    }
}

#[test]
fn every_failed_invariant_is_named() {
    let mut r = ChaosReport {
        deadline_ms: 2000,
        ..ChaosReport::default()
    };
    r.queries = count(&[
        Outcome::Real,
        Outcome::Rebuilt { agrees: false },
        Outcome::Error {
            kind: "deadline".into(),
            early: false,
        },
    ]);
    assert!(violations(&r).is_empty(), "{:?}", violations(&r));
    r.queries = count(&[
        Outcome::Real,
        Outcome::Wrong("off".into()),
        Outcome::Lost("cut".into()),
        Outcome::Error {
            kind: "deadline".into(),
            early: true,
        },
    ]);
    r.frontend.batches_running_end = 3;
    r.frontend.rss_warm_kb = 10_000;
    r.frontend.rss_end_kb = 100_000;
    let v = violations(&r).join("; ");
    for named in [
        "lost",
        "not marked rebuilt",
        "before the",
        "still running",
        "RSS",
    ] {
        assert!(v.contains(named), "{named} missing from {v}");
    }
}
