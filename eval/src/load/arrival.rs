//! Request send times for a given arrival rate: Poisson (exponential gaps, seeded) or
//! constant spacing.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

/// How requests arrive in rate mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    /// Exponentially distributed gaps with mean `1/rate` (a Poisson process).
    Poisson,
    /// Gaps of exactly `1/rate`.
    Constant,
}

/// Send offsets in seconds from the start, non-decreasing, the first at 0.
///
/// Stops after `count` offsets if given, and before the first offset `>= duration_s` if given
/// (at least one of them must be given, else none are produced). `rate` is in requests per
/// second; an infinite rate sends everything at offset 0. A rate that is not positive yields no
/// offsets. The same `seed` gives the same offsets.
pub fn offsets(
    kind: ArrivalKind,
    rate: f64,
    seed: u64,
    count: Option<usize>,
    duration_s: Option<f64>,
) -> Vec<f64> {
    if rate.is_nan() || rate <= 0.0 || (count.is_none() && duration_s.is_none()) {
        return Vec::new();
    }
    let within = |t: f64, n: usize| count.is_none_or(|c| n < c) && duration_s.is_none_or(|d| t < d);
    let mut out = Vec::new();
    if rate.is_infinite() {
        // With a duration only, "everything at once" has no count: send one burst of 1.
        let n = count.unwrap_or(1);
        if duration_s.is_none_or(|d| d > 0.0) {
            out.resize(n, 0.0);
        }
        return out;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let exp = Exp::new(rate).ok();
    let mut t = 0.0;
    while within(t, out.len()) {
        out.push(t);
        let gap = match (kind, &exp) {
            (ArrivalKind::Poisson, Some(e)) => e.sample(&mut rng),
            _ => 1.0 / rate,
        };
        t += gap;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_spacing_is_exact() {
        let o = offsets(ArrivalKind::Constant, 4.0, 0, Some(5), None);
        assert_eq!(o, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        let d = offsets(ArrivalKind::Constant, 2.0, 0, None, Some(2.0));
        assert_eq!(d, vec![0.0, 0.5, 1.0, 1.5]);
        let both = offsets(ArrivalKind::Constant, 2.0, 0, Some(2), Some(10.0));
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn poisson_is_seeded_and_has_the_right_mean_gap() {
        let a = offsets(ArrivalKind::Poisson, 10.0, 42, Some(20_000), None);
        let b = offsets(ArrivalKind::Poisson, 10.0, 42, Some(20_000), None);
        let c = offsets(ArrivalKind::Poisson, 10.0, 43, Some(20_000), None);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a[0], 0.0);
        assert!(a.windows(2).all(|w| w[1] >= w[0]));
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.1).abs() < 0.005, "mean gap {mean}");
        // Exponential gaps: the standard deviation equals the mean.
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((var.sqrt() - 0.1).abs() < 0.01, "sd {}", var.sqrt());
        // Not evenly spaced.
        assert!(gaps.iter().any(|g| (g - 0.1).abs() > 0.05));
    }

    #[test]
    fn poisson_with_duration_stops_before_it() {
        let o = offsets(ArrivalKind::Poisson, 50.0, 7, None, Some(10.0));
        assert!(o.iter().all(|t| *t < 10.0));
        assert!(
            o.len() > 400 && o.len() < 600,
            "{} arrivals in 10 s at 50/s",
            o.len()
        );
    }

    #[test]
    fn degenerate_rates() {
        assert_eq!(
            offsets(ArrivalKind::Poisson, f64::INFINITY, 0, Some(3), None),
            vec![0.0; 3]
        );
        assert!(offsets(ArrivalKind::Poisson, 0.0, 0, Some(3), None).is_empty());
        assert!(offsets(ArrivalKind::Poisson, -1.0, 0, Some(3), None).is_empty());
        assert!(offsets(ArrivalKind::Constant, 1.0, 0, None, None).is_empty());
    }
}
