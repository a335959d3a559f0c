use super::*;
use crate::alerts::sinks::testing::{alert, sink};
use crate::alerts::sinks::SinkError;
use crate::alerts::{Sensitive, SinkKind};

#[test]
fn the_filter_takes_severities_at_or_above_the_minimum_and_the_listed_signals() {
    let all = Filter {
        min_severity: Severity::Info,
        signals: Vec::new(),
    };
    let warning_up = Filter {
        min_severity: Severity::Warning,
        signals: Vec::new(),
    };
    let critical_spikes = Filter {
        min_severity: Severity::Critical,
        signals: vec![Signal::Spike, Signal::FallbackFailing],
    };
    let cases = [
        (&all, Severity::Info, Signal::ExpiryAhead, true),
        (&all, Severity::Critical, Signal::AgentHealth, true),
        (&warning_up, Severity::Info, Signal::ExpiryAhead, false),
        (&warning_up, Severity::Warning, Signal::ExpiryAhead, true),
        (&warning_up, Severity::Critical, Signal::Spike, true),
        (&critical_spikes, Severity::Critical, Signal::Spike, true),
        (&critical_spikes, Severity::Critical, Signal::FallbackFailing, true),
        (&critical_spikes, Severity::Critical, Signal::StaleVersion, false),
        (&critical_spikes, Severity::Warning, Signal::Spike, false),
    ];
    for (filter, severity, signal, expected) in cases {
        let a = Alert {
            severity,
            signal,
            ..alert()
        };
        assert_eq!(filter.accepts(&a), expected, "{filter:?} {severity} {signal}");
    }
}

/// Waits (a little) until `done` holds for the stats.
async fn until(dispatcher: &Dispatcher, done: impl Fn(&[SinkStats]) -> bool) -> Vec<SinkStats> {
    for _ in 0..200 {
        let stats = dispatcher.stats();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dispatcher.stats()
}

#[tokio::test]
async fn each_sink_gets_only_what_its_filter_takes_and_counts_it() {
    let everything = sink("everything", SinkKind::Log);
    let spikes = SinkConfig {
        signals: vec![Signal::Spike],
        ..sink("spikes", SinkKind::Log)
    };
    let critical = SinkConfig {
        min_severity: Severity::Critical,
        ..sink("critical", SinkKind::Log)
    };
    let dispatcher = Dispatcher::start(vec![everything, spikes, critical]);
    dispatcher.send(Arc::new(alert()));
    dispatcher.send(Arc::new(Alert {
        signal: Signal::ExpiryAhead,
        severity: Severity::Warning,
        ..alert()
    }));
    let stats = until(&dispatcher, |s| s[0].delivered == 2).await;
    let delivered: Vec<(&str, &str, u64)> = stats.iter().map(|s| (s.name.as_str(), s.kind, s.delivered)).collect();
    assert_eq!(
        delivered,
        [("everything", "log", 2), ("spikes", "log", 1), ("critical", "log", 1)]
    );
    assert!(stats.iter().all(|s| s.failed == 0 && s.dropped == 0 && s.queued == 0));
    dispatcher.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_sink_that_cannot_be_set_up_fails_each_notification() {
    let bad = sink(
        "bad",
        SinkKind::Webhook {
            url: Sensitive::new("ftp://example.com/x".to_owned()),
            headers: Vec::new(),
            ca_file: None,
        },
    );
    assert!(matches!(crate::alerts::sinks::check(&bad), Err(SinkError::Url { .. })));
    let dispatcher = Dispatcher::start(vec![bad, sink("log", SinkKind::Log)]);
    dispatcher.send(Arc::new(alert()));
    let stats = until(&dispatcher, |s| s[0].failed == 1 && s[1].delivered == 1).await;
    assert_eq!((stats[0].failed, stats[1].delivered), (1, 1), "{stats:?}");
    dispatcher.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_zero_queue_is_a_queue_of_one() {
    let dispatcher = Dispatcher::start(vec![SinkConfig {
        queue: 0,
        ..sink("log", SinkKind::Log)
    }]);
    dispatcher.send(Arc::new(alert()));
    let stats = until(&dispatcher, |s| s[0].delivered == 1).await;
    assert_eq!(stats[0].delivered, 1);
    dispatcher.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn close_waits_for_queued_deliveries_then_stops() {
    let dispatcher = Dispatcher::start(vec![SinkConfig {
        queue: 100,
        ..sink("log", SinkKind::Log)
    }]);
    for _ in 0..50 {
        dispatcher.send(Arc::new(alert()));
    }
    let counters = Arc::clone(&dispatcher.sinks[0].counters);
    dispatcher.close(Duration::from_secs(5)).await;
    assert_eq!(counters.delivered.load(Ordering::Relaxed), 50);
}

#[test]
fn sink_settings_holding_tokens_print_redacted() {
    let config = sink(
        "pd",
        SinkKind::PagerDuty {
            url: Sensitive::new("https://events.example.com/v2/enqueue?token=QU3RYT0KEN".to_owned()),
            routing_key: Sensitive::new("R0UT1NGK3Y".to_owned()),
            ca_file: None,
        },
    );
    let shown = format!("{config:?} {config:#?}");
    assert!(
        !shown.contains("QU3RYT0KEN") && !shown.contains("R0UT1NGK3Y"),
        "{shown}"
    );
}

#[tokio::test]
async fn the_dispatcher_prints_names_and_endpoints_only() {
    let config = sink(
        "pd",
        SinkKind::PagerDuty {
            url: Sensitive::new("https://events.example.com/v2/enqueue?token=QU3RYT0KEN".to_owned()),
            routing_key: Sensitive::new("R0UT1NGK3Y".to_owned()),
            ca_file: None,
        },
    );
    let dispatcher = Dispatcher::start(vec![config]);
    assert_eq!(
        format!("{dispatcher:?}"),
        r#"["pd (pagerduty, https://events.example.com:443)"]"#
    );
    dispatcher.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_dispatcher_can_be_shared_and_closed_on_another_task() {
    fn shareable<T: Send + Sync + 'static>(_: &T) {}
    fn spawnable<T: std::future::Future + Send + 'static>(_: &T) {}
    let dispatcher = Dispatcher::start(vec![sink("log", SinkKind::Log)]);
    shareable(&dispatcher);
    let closing = dispatcher.close(Duration::from_secs(1));
    spawnable(&closing);
    tokio::spawn(closing).await.unwrap();
}
