//! A fixed-size latency histogram.

use std::time::Duration;

/// Sub-buckets per power of two: quantiles are within about 6% of the true value.
const SUB_BUCKETS: u64 = 16;
/// Buckets: exact below 16 µs, then 16 per power of two up to 2^64 µs.
const BUCKETS: usize = 16 + 60 * 16;

/// A fixed-size log-linear latency histogram in microseconds: bounded memory however long the
/// a run lasts.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, max_us: 0 }
    }
}

impl Histogram {
    fn bucket(micros: u64) -> usize {
        if micros < SUB_BUCKETS {
            return micros as usize;
        }
        let exponent = u64::from(63 - micros.leading_zeros()); // >= 4
        let sub = (micros >> (exponent - 4)) & (SUB_BUCKETS - 1);
        (SUB_BUCKETS + (exponent - 4) * SUB_BUCKETS + sub) as usize
    }

    /// The middle of bucket `index`, in microseconds.
    fn value(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB_BUCKETS {
            return index;
        }
        let exponent = (index - SUB_BUCKETS) / SUB_BUCKETS + 4;
        let sub = (index - SUB_BUCKETS) % SUB_BUCKETS;
        let width = 1u64 << (exponent - 4);
        (SUB_BUCKETS + sub) * width + width / 2
    }

    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = Histogram::bucket(micros).min(BUCKETS - 1);
        self.counts[bucket] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(micros);
    }

    /// Adds every latency `other` counted.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Latencies counted.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The latency at `quantile` (0 to 1), within a bucket; `None` when empty.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((quantile * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(Histogram::value(index).min(self.max_us)));
            }
        }
        Some(Duration::from_micros(self.max_us))
    }

    /// The largest latency recorded.
    pub fn max(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.max_us))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Quantiles land within a bucket's width of the true value, and never above the maximum.
    #[test]
    fn histogram_quantiles_are_close() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for micros in 1..=10_000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        let p50 = histogram.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = histogram.quantile(0.99).unwrap().as_micros() as f64;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.07, "{p50}");
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.07, "{p99}");
        assert_eq!(histogram.max(), Some(Duration::from_micros(10_000)));
        assert!(histogram.quantile(1.0).unwrap() <= Duration::from_micros(10_000));
        for micros in [0, 1, 15, 16, 17, 31, 32, 1 << 20, u64::MAX] {
            let bucket = Histogram::bucket(micros);
            assert!(bucket < BUCKETS, "{micros}");
            if micros < 1 << 40 {
                let value = Histogram::value(bucket) as f64;
                assert!((value - micros as f64).abs() <= (micros as f64 / 16.0).max(0.5) + 1.0);
            }
        }
    }
}
