//! A small HDR-style histogram of `u64` values (nanoseconds here), written for this tool.
//!
//! Buckets are log-linear: values below `2^SUB_BITS` get one exact bucket each; above that every
//! power of two is split into `2^(SUB_BITS-1)` equal sub-buckets, so a bucket is never wider than
//! `1/2^(SUB_BITS-1)` (≈ 1.6 %) of its lower bound. The whole `u64` range fits in
//! [`BUCKETS`] counters (≈ 30 KiB), so one shared instance is cheap.
//!
//! Recording is lock-free (`fetch_add` / `fetch_min` / `fetch_max`, all `Relaxed`) and never
//! allocates, so thousands of client tasks can record into one `Arc<Histogram>`.
//! [`Histogram::snapshot`] copies the counters out for percentile queries.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of linear resolution: values `< 2^SUB_BITS` are exact.
const SUB_BITS: u32 = 7;
/// Sub-buckets per power of two above the linear range.
const HALF: u64 = 1 << (SUB_BITS - 1);
/// Number of buckets needed to cover every `u64`.
pub const BUCKETS: usize = ((64 - SUB_BITS as usize + 1) * HALF as usize) + HALF as usize;

/// Bucket index of `v`.
fn bucket_of(v: u64) -> usize {
    if v < (1 << SUB_BITS) {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - (SUB_BITS - 1);
    let mantissa = v >> shift; // in [HALF, 2*HALF)
    ((shift as u64) * HALF + mantissa) as usize
}

/// Inclusive `(lowest, highest)` value that falls into bucket `idx`.
fn bucket_bounds(idx: usize) -> (u64, u64) {
    let idx = idx as u64;
    if idx < (1 << SUB_BITS) {
        return (idx, idx);
    }
    let shift = idx / HALF - 1;
    let mantissa = idx % HALF + HALF;
    let low = mantissa << shift;
    let high = low.saturating_add((1u64 << shift) - 1);
    (low, high)
}

/// Lock-free log-linear histogram; see the module docs.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count.load(Ordering::Relaxed))
            .field("min", &self.min.load(Ordering::Relaxed))
            .field("max", &self.max.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    /// Record one value.
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        // Plain loads first: min/max rarely change, and a load avoids a contended CAS loop.
        if v < self.min.load(Ordering::Relaxed) {
            self.min.fetch_min(v, Ordering::Relaxed);
        }
        if v > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// Copy the current counters out.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
            min: self.min.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    counts: Vec<u64>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Snapshot {
    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest recorded value (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest recorded value (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Arithmetic mean (exact, 0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Value at quantile `q` in `[0, 1]`: the highest value of the bucket holding the
    /// `ceil(q * count)`-th smallest sample, clamped to the recorded `[min, max]`.
    /// The answer is never below the true value and at most one bucket width above it.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (_, high) = bucket_bounds(idx);
                return high.clamp(self.min(), self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut expected_low = 0u64;
        for idx in 0..BUCKETS {
            let (low, high) = bucket_bounds(idx);
            assert_eq!(low, expected_low, "bucket {idx}");
            assert!(high >= low);
            assert_eq!(bucket_of(low), idx);
            assert_eq!(bucket_of(high), idx);
            if idx + 1 < BUCKETS {
                expected_low = high + 1;
            } else {
                assert_eq!(high, u64::MAX);
            }
        }
    }

    #[test]
    fn relative_error_is_bounded() {
        for v in [200u64, 1_000, 12_345, 999_999, 1_234_567_890, u64::MAX / 3] {
            let (low, high) = bucket_bounds(bucket_of(v));
            assert!(low <= v && v <= high);
            assert!(((high - low) as f64) / (low as f64) <= 1.0 / HALF as f64);
        }
    }

    #[test]
    fn exact_for_small_values() {
        let h = Histogram::new();
        for v in 1..=100u64 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.min(), 1);
        assert_eq!(s.max(), 100);
        assert_eq!(s.quantile(0.5), 50);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.quantile(1.0), 100);
        assert_eq!(s.quantile(0.0), 1);
        assert!((s.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_of_a_known_uniform_range() {
        // 1..=10_000 microseconds, in nanoseconds.
        let h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us * 1_000);
        }
        let s = h.snapshot();
        let within = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(got >= want, "got {got} < want {want}");
            assert!(
                err <= 1.0 / HALF as f64,
                "got {got}, want {want}, err {err}"
            );
        };
        within(s.quantile(0.5), 5_000_000);
        within(s.quantile(0.9), 9_000_000);
        within(s.quantile(0.99), 9_900_000);
        within(s.quantile(0.999), 9_990_000);
        assert_eq!(s.quantile(1.0), 10_000_000);
        assert_eq!(s.min(), 1_000);
    }

    #[test]
    fn outliers_land_in_p99_max_only() {
        let h = Histogram::new();
        for _ in 0..990 {
            h.record(1_000_000); // 1 ms
        }
        for _ in 0..10 {
            h.record(500_000_000); // 500 ms
        }
        let s = h.snapshot();
        assert!(s.quantile(0.5) >= 1_000_000 && s.quantile(0.5) < 1_020_000);
        assert!(s.quantile(0.99) < 1_020_000);
        assert!(s.quantile(0.991) >= 500_000_000);
        assert_eq!(s.max(), 500_000_000);
    }

    #[test]
    fn empty_snapshot_is_zero() {
        let s = Histogram::new().snapshot();
        assert_eq!(s.count(), 0);
        assert_eq!(s.quantile(0.99), 0);
        assert_eq!(s.min(), 0);
        assert_eq!(s.max(), 0);
        assert_eq!(s.mean(), 0.0);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let h = std::sync::Arc::new(Histogram::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record(t * 1_000_000 + i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count(), 40_000);
    }
}
