//! Benchmark cases (see the `weft-bench` binary) and their reporting.

pub mod authz;
pub mod l4;
pub mod l7;
pub mod xds_propagation;

use std::time::Duration;

/// Percentiles of a set of samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub p50: Duration,
    pub p90: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &mut [Duration]) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.5),
            p90: at(0.9),
            max: *samples.last().expect("not empty"),
        }
    }
}

pub fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}
