//! The latency histogram, which travels from a client process to the orchestrator as
//! one text field.

use std::fmt::Write as _;
use std::time::Duration;

/// Sub-buckets per power of two: values are kept to within 1/128 (0.8 %).
const SUB: u64 = 128;
const SUB_BITS: u32 = 7;

/// A log-linear histogram of durations in nanoseconds (HDR-style), with the exact max.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    pub count: u64,
    pub max_ns: u64,
    pub sum_ns: u128,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram::default()
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
        (SUB + u64::from(e - SUB_BITS) * SUB + sub) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let e = (i - SUB) / SUB + u64::from(SUB_BITS);
        let sub = (i - SUB) % SUB;
        let lo = (SUB + sub) << (e - u64::from(SUB_BITS));
        lo + (1 << (e - u64::from(SUB_BITS))) / 2
    }

    pub fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = Histogram::index(v);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.count += 1;
        self.max_ns = self.max_ns.max(v);
        self.sum_ns += u128::from(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
        self.sum_ns += other.sum_ns;
    }

    /// The `q` quantile (0.0..=1.0) as a duration; the exact max for 1.0.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        if q >= 1.0 {
            return Duration::from_nanos(self.max_ns);
        }
        let rank = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Histogram::value(i).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    /// One whitespace-free text field: `count,max,sum;index:count,...`.
    pub fn encode(&self) -> String {
        let mut s = format!("{},{},{};", self.count, self.max_ns, self.sum_ns);
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                let _ = write!(s, "{i}:{c},");
            }
        }
        s
    }

    pub fn decode(s: &str) -> Option<Histogram> {
        let (head, body) = s.split_once(';')?;
        let mut head = head.split(',');
        let mut h = Histogram {
            counts: Vec::new(),
            count: head.next()?.parse().ok()?,
            max_ns: head.next()?.parse().ok()?,
            sum_ns: head.next()?.parse().ok()?,
        };
        for pair in body.split(',').filter(|p| !p.is_empty()) {
            let (i, c) = pair.split_once(':')?;
            let (i, c): (usize, u64) = (i.parse().ok()?, c.parse().ok()?);
            if h.counts.len() <= i {
                h.counts.resize(i + 1, 0);
            }
            h.counts[i] += c;
        }
        Some(h)
    }
}
