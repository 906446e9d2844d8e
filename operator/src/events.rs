//! Which kube Events a status change is worth. Only transitions are
//! reported, so a steady resource records nothing on each resync.

use kube::runtime::events::{Event, EventType};

use crate::crd::CodedInferenceServiceStatus;
use crate::status::{DEGRADED, INVALID_SPEC, READY, find};

/// Events for going from `old` to `new` status.
pub fn transitions(
    old: Option<&CodedInferenceServiceStatus>,
    new: &CodedInferenceServiceStatus,
) -> Vec<Event> {
    let was = |t| find(old, t).map(|c| (c.status.as_str(), c.reason.as_str()));
    let now = |t| find(Some(new), t);
    let mut events = Vec::new();
    if let Some(ready) = now(READY) {
        let was_ready = was(READY);
        match ready.status.as_str() {
            "True" if was_ready.map(|w| w.0) != Some("True") => events.push(event(
                EventType::Normal,
                "Ready",
                "Serving",
                format!("serving at {}", new.endpoint.as_deref().unwrap_or("?")),
            )),
            "False"
                if ready.reason == INVALID_SPEC && was_ready.map(|w| w.1) != Some(INVALID_SPEC) =>
            {
                events.push(event(
                    EventType::Warning,
                    INVALID_SPEC,
                    "Validating",
                    ready.message.clone(),
                ))
            }
            "False" if was_ready.map(|w| w.0) == Some("True") => events.push(event(
                EventType::Warning,
                "NotReady",
                "Serving",
                ready.message.clone(),
            )),
            _ => {}
        }
    }
    if let Some(degraded) = now(DEGRADED) {
        let was_degraded = was(DEGRADED).map(|w| w.0) == Some("True");
        match (was_degraded, degraded.status.as_str()) {
            (false, "True") => events.push(event(
                EventType::Warning,
                "Degraded",
                "Serving",
                degraded.message.clone(),
            )),
            (true, "False") => events.push(event(
                EventType::Normal,
                "Recovered",
                "Serving",
                degraded.message.clone(),
            )),
            _ => {}
        }
    }
    events
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cis;
    use crate::status::{Observed, compute, invalid};
    use k8s_openapi::jiff::Timestamp;

    fn status(m: i32, p: i32, f: i32) -> CodedInferenceServiceStatus {
        let obs = Observed {
            model_ready: m,
            parity_ready: p,
            frontend_ready: f,
            parities_down: 0,
        };
        compute(
            &cis("demo"),
            obs,
            "http://demo-frontend.ns1.svc:8080".into(),
            Timestamp::UNIX_EPOCH,
        )
    }

    fn reasons(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn becoming_ready_and_degrading_are_reported_once() {
        let starting = status(0, 0, 0);
        assert!(reasons(&transitions(None, &starting)).is_empty());
        let ready = status(2, 1, 1);
        assert_eq!(reasons(&transitions(Some(&starting), &ready)), ["Ready"]);
        assert!(
            transitions(Some(&ready), &ready).is_empty(),
            "steady state is quiet"
        );
        let degraded = status(1, 1, 1);
        assert_eq!(reasons(&transitions(Some(&ready), &degraded)), ["Degraded"]);
        assert_eq!(
            reasons(&transitions(Some(&degraded), &ready)),
            ["Recovered"]
        );
        let down = status(2, 1, 0);
        let evs = transitions(Some(&ready), &down);
        assert_eq!(reasons(&evs), ["NotReady"]);
        assert!(matches!(evs[0].type_, EventType::Warning));
    }

    #[test]
    fn invalid_spec_warns_once() {
        let bad = invalid(
            &cis("demo"),
            "coding.r must be between 1 and coding.k",
            Timestamp::UNIX_EPOCH,
        );
        let evs = transitions(None, &bad);
        assert_eq!(reasons(&evs), ["InvalidSpec"]);
        assert_eq!(
            evs[0].note.as_deref(),
            Some("coding.r must be between 1 and coding.k")
        );
        assert!(transitions(Some(&bad), &bad).is_empty());
    }
}
