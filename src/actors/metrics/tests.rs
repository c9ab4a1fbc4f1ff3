use std::{sync::atomic::Ordering, time::Duration};

use prometheus::{Encoder, Registry, TextEncoder};

use super::{Recorder, window::*};
use crate::actors::router::Timings;

#[test]
fn window_percentiles_come_from_the_fine_histogram_within_5_percent() {
    let t = Totals::new();
    for ms in 1..=100u64 {
        t.latency[fine_bucket(Duration::from_millis(ms))].fetch_add(1, Ordering::Relaxed);
    }
    let s = t.sample();
    for (q, want) in [(0.5, 50.0), (0.95, 95.0), (0.99, 99.0)] {
        let got = s.quantile_ms(q).unwrap();
        assert!((got - want).abs() / want < 0.05, "p{q}: {got} for {want}");
    }
    assert_eq!(Sampled::default().quantile_ms(0.5), None);
    assert_eq!(fine_bucket(Duration::from_secs(100_000)), FINE_BUCKETS - 1);
}

#[test]
fn the_window_is_a_difference_of_samples() {
    let registry = Registry::new();
    let r = Recorder::new(&registry, &["ok", "validation"]).unwrap();
    let timings = Timings {
        total: Duration::from_millis(4),
        ..Default::default()
    };
    r.request("http", Ok((3, &timings)));
    let before = r.totals.sample();
    r.request("grpc", Ok((2, &timings)));
    r.request("grpc", Err("validation"));
    r.for_model("reranker").request("grpc", Err("validation"));
    let w = r.totals.sample().since(&before);
    assert_eq!((w.requests, w.errors, w.texts), (3, 2, 2));
    assert_eq!(w.sums_us[4], 4000);
    let text = {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert!(
        text.contains(
            "actor_infer_requests_total{model=\"\",outcome=\"validation\",transport=\"grpc\"} 1"
        ) && text.contains(
            "actor_infer_requests_total{model=\"reranker\",outcome=\"validation\",transport=\"grpc\"} 1"
        ),
        "each model's requests are counted under its name: {text}"
    );
}
