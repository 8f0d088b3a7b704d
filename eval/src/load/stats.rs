//! Per-request measurements and their summaries: exact percentiles, goodput against latency
//! targets, throughput, errors by kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one request measured. Times are seconds from the moment the request was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestResult {
    /// `None` on success; else the error kind (`http_429`, `transport`, `stream_error`, ...)
    /// and the body or message (truncated).
    pub error: Option<(String, String)>,
    /// Seconds to the first chunk with content (streaming only).
    pub ttft: Option<f64>,
    /// Seconds between consecutive content chunks (streaming only).
    pub itl: Vec<f64>,
    /// Seconds from sending to the end of the answer.
    pub e2e: f64,
    /// Prompt tokens from the server's `usage`, if it sent one.
    pub prompt_tokens: Option<u64>,
    /// Output tokens: `usage.completion_tokens`, else the number of content chunks.
    pub output_tokens: u64,
    /// Whether `output_tokens` came from `usage` (else from counting chunks).
    pub usage_reported: bool,
}

impl RequestResult {
    /// Whether the request succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Time per output token after the first, in seconds: `(e2e - ttft) / (output_tokens - 1)`;
    /// `None` without a TTFT or with fewer than 2 output tokens.
    pub fn tpot(&self) -> Option<f64> {
        let ttft = self.ttft?;
        (self.output_tokens > 1).then(|| (self.e2e - ttft) / (self.output_tokens - 1) as f64)
    }
}

/// Linear-interpolation percentile (NumPy's default) of sorted values; `p` in 0..=100.
/// Returns NaN for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Mean, percentiles, extremes and count of a set of values (all in the same unit; the
/// reports use milliseconds).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (any order); `None` when empty or when any value is not finite.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Some(Summary {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// Latency targets for goodput, in milliseconds; a request counts when it meets every target
/// given. Parsed from `ttft:500,tpot:100,e2e:10000`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct GoodputTargets {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

/// A `--goodput` value that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GoodputParseError {
    #[error("goodput target `{0}` is not NAME:MS (names: ttft, tpot, e2e)")]
    Malformed(String),
    #[error("goodput target name `{0}` is unknown (names: ttft, tpot, e2e)")]
    UnknownName(String),
    #[error("goodput target `{0}` needs a positive number of milliseconds")]
    BadValue(String),
}

impl std::str::FromStr for GoodputTargets {
    type Err = GoodputParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = GoodputTargets::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .or_else(|| part.split_once('='))
                .ok_or_else(|| GoodputParseError::Malformed(part.to_string()))?;
            let ms: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v > 0.0)
                .ok_or_else(|| GoodputParseError::BadValue(part.to_string()))?;
            match name.trim().to_ascii_lowercase().as_str() {
                "ttft" => t.ttft_ms = Some(ms),
                "tpot" => t.tpot_ms = Some(ms),
                "e2e" | "e2el" => t.e2e_ms = Some(ms),
                other => return Err(GoodputParseError::UnknownName(other.to_string())),
            }
        }
        if t.is_empty() {
            return Err(GoodputParseError::Malformed(s.to_string()));
        }
        Ok(t)
    }
}

impl GoodputTargets {
    /// Whether no target is set.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2e_ms.is_none()
    }

    /// Whether a successful request meets every target. A request with a single output token
    /// has no TPOT and meets a TPOT target; a request without a TTFT (non-streaming) fails a
    /// TTFT target.
    pub fn met_by(&self, r: &RequestResult) -> bool {
        if !r.ok() {
            return false;
        }
        if let Some(t) = self.ttft_ms {
            match r.ttft {
                Some(v) if v * 1000.0 <= t => {}
                _ => return false,
            }
        }
        if let Some(t) = self.tpot_ms {
            if let Some(v) = r.tpot() {
                if v * 1000.0 > t {
                    return false;
                }
            }
        }
        if let Some(t) = self.e2e_ms {
            if r.e2e * 1000.0 > t {
                return false;
            }
        }
        true
    }
}

/// Count and first body of one kind of error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorStat {
    pub count: usize,
    /// Body (HTTP errors), event data (stream errors) or message (transport) of the first one.
    pub first: String,
}

/// Everything reported for one load level (one concurrency, or one request rate).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LevelResult {
    /// `concurrency 4` or `rate 2.5 req/s` as written in tables.
    pub label: String,
    /// The concurrency of this level (fixed-concurrency mode).
    pub concurrency: Option<usize>,
    /// The arrival rate of this level in requests/s (rate mode).
    pub request_rate: Option<f64>,
    /// Requests measured (excluding warmup).
    pub requests: usize,
    pub completed: usize,
    pub failed: usize,
    /// Warmup requests sent before measuring, and how many of them failed.
    pub warmup_requests: usize,
    pub warmup_failed: usize,
    /// Seconds from the first measured request to the end of the last.
    pub duration_s: f64,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens of completed requests per second.
    pub output_throughput: f64,
    /// Prompt + output tokens of completed requests per second (prompt tokens from `usage`).
    pub total_token_throughput: f64,
    /// Completed requests meeting every goodput target, per second (`None` without targets).
    pub goodput: Option<f64>,
    /// Completed requests meeting every goodput target.
    pub good_requests: Option<usize>,
    pub total_prompt_tokens: u64,
    pub total_output_tokens: u64,
    /// Completed requests whose output tokens were counted from chunks (no `usage`).
    pub output_tokens_counted_from_chunks: usize,
    /// Milliseconds; `None` where nothing was measured (e.g. TTFT without streaming).
    pub ttft_ms: Option<Summary>,
    pub itl_ms: Option<Summary>,
    pub tpot_ms: Option<Summary>,
    pub e2e_ms: Option<Summary>,
    /// Output tokens per completed request.
    pub output_tokens_per_request: Option<Summary>,
    /// Prompt tokens per completed request (where the server reported them).
    pub prompt_tokens_per_request: Option<Summary>,
    /// Errors by kind (`http_429`, `http_500`, `transport`, `stream_error`, ...).
    pub errors: BTreeMap<String, ErrorStat>,
}

/// The load level a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    Concurrency(usize),
    Rate(f64),
}

impl Level {
    /// Label for tables and charts.
    pub fn label(&self) -> String {
        match self {
            Level::Concurrency(c) => format!("concurrency {c}"),
            Level::Rate(r) if r.is_infinite() => "rate inf".to_string(),
            Level::Rate(r) => format!("rate {r} req/s"),
        }
    }
}

/// Builds the level's report from its measured requests.
///
/// `duration_s` is the measured wall time; `warmup` is (sent, failed) of the warmup phase.
pub fn aggregate(
    level: Level,
    results: &[RequestResult],
    duration_s: f64,
    warmup: (usize, usize),
    goodput: Option<&GoodputTargets>,
) -> LevelResult {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok()).collect();
    let ms = |v: f64| v * 1000.0;
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft).map(ms).collect();
    let itl: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.itl.iter().copied())
        .map(ms)
        .collect();
    let tpot: Vec<f64> = ok.iter().filter_map(|r| r.tpot()).map(ms).collect();
    let e2e: Vec<f64> = ok.iter().map(|r| ms(r.e2e)).collect();
    let out_tok: Vec<f64> = ok.iter().map(|r| r.output_tokens as f64).collect();
    let prompt_tok: Vec<f64> = ok
        .iter()
        .filter_map(|r| r.prompt_tokens)
        .map(|t| t as f64)
        .collect();
    let total_output_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let total_prompt_tokens: u64 = ok.iter().filter_map(|r| r.prompt_tokens).sum();
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let good = goodput.map(|g| ok.iter().filter(|r| g.met_by(r)).count());
    let mut errors: BTreeMap<String, ErrorStat> = BTreeMap::new();
    for (kind, body) in results.iter().filter_map(|r| r.error.as_ref()) {
        errors
            .entry(kind.clone())
            .and_modify(|e| e.count += 1)
            .or_insert_with(|| ErrorStat {
                count: 1,
                first: body.clone(),
            });
    }
    let (concurrency, request_rate) = match level {
        Level::Concurrency(c) => (Some(c), None),
        Level::Rate(r) => (None, Some(r)),
    };
    LevelResult {
        label: level.label(),
        concurrency,
        request_rate: request_rate.filter(|r| r.is_finite()),
        requests: results.len(),
        completed: ok.len(),
        failed: results.len() - ok.len(),
        warmup_requests: warmup.0,
        warmup_failed: warmup.1,
        duration_s,
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(total_output_tokens as f64),
        total_token_throughput: per_s((total_output_tokens + total_prompt_tokens) as f64),
        goodput: good.map(|g| per_s(g as f64)),
        good_requests: good,
        total_prompt_tokens,
        total_output_tokens,
        output_tokens_counted_from_chunks: ok.iter().filter(|r| !r.usage_reported).count(),
        ttft_ms: Summary::of(&ttft),
        itl_ms: Summary::of(&itl),
        tpot_ms: Summary::of(&tpot),
        e2e_ms: Summary::of(&e2e),
        output_tokens_per_request: Summary::of(&out_tok),
        prompt_tokens_per_request: Summary::of(&prompt_tok),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile(&v, 50.0), 2.5));
        assert!(close(percentile(&v, 0.0), 1.0));
        assert!(close(percentile(&v, 100.0), 4.0));
        assert!(close(percentile(&v, 90.0), 3.7));
        assert!(close(percentile(&v, 99.0), 3.97));
        assert!(close(percentile(&[5.0], 99.0), 5.0));
        assert!(percentile(&[], 50.0).is_nan());
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!(close(percentile(&hundred, 99.0), 99.01));
        assert!(close(percentile(&hundred, 50.0), 50.5));
    }

    #[test]
    fn summary_sorts_and_rejects_empty_or_nan() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.n, 4);
        assert!(close(s.mean, 2.5) && close(s.p50, 2.5) && close(s.min, 1.0) && close(s.max, 4.0));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }

    fn req(ttft: f64, e2e: f64, tokens: u64) -> RequestResult {
        RequestResult {
            ttft: Some(ttft),
            e2e,
            output_tokens: tokens,
            usage_reported: true,
            ..Default::default()
        }
    }

    #[test]
    fn tpot_is_decode_time_per_token_after_the_first() {
        assert!(close(req(0.1, 1.1, 11).tpot().unwrap(), 0.1));
        assert_eq!(req(0.1, 0.1, 1).tpot(), None);
        let no_stream = RequestResult {
            e2e: 1.0,
            output_tokens: 5,
            ..Default::default()
        };
        assert_eq!(no_stream.tpot(), None);
    }

    #[test]
    fn goodput_targets_parse_and_judge() {
        let g: GoodputTargets = "ttft:500, tpot:100".parse().unwrap();
        assert_eq!(g.ttft_ms, Some(500.0));
        assert_eq!(g.tpot_ms, Some(100.0));
        assert_eq!(g.e2e_ms, None);
        assert!("e2e=2000".parse::<GoodputTargets>().unwrap().e2e_ms == Some(2000.0));
        assert!(matches!(
            "foo:1".parse::<GoodputTargets>(),
            Err(GoodputParseError::UnknownName(_))
        ));
        assert!(matches!(
            "ttft".parse::<GoodputTargets>(),
            Err(GoodputParseError::Malformed(_))
        ));
        assert!(matches!(
            "ttft:-1".parse::<GoodputTargets>(),
            Err(GoodputParseError::BadValue(_))
        ));
        assert!("".parse::<GoodputTargets>().is_err());

        assert!(g.met_by(&req(0.5, 1.4, 10))); // ttft 500 ms, tpot 100 ms: on the limits
        assert!(!g.met_by(&req(0.6, 1.0, 10))); // ttft too slow
        assert!(!g.met_by(&req(0.1, 2.0, 10))); // tpot 211 ms
        assert!(g.met_by(&req(0.1, 0.1, 1))); // no tpot: only ttft judged
        let mut failed = req(0.1, 0.2, 2);
        failed.error = Some(("http_500".into(), "x".into()));
        assert!(!g.met_by(&failed));
        let no_ttft = RequestResult {
            e2e: 0.1,
            output_tokens: 2,
            ..Default::default()
        };
        assert!(!g.met_by(&no_ttft));
    }

    #[test]
    fn aggregate_counts_throughput_goodput_and_errors() {
        let mut results = vec![req(0.1, 1.0, 10), req(0.2, 2.0, 10), req(1.0, 3.0, 20)];
        for r in &mut results {
            r.prompt_tokens = Some(5);
            r.itl = vec![0.1, 0.1];
        }
        results[2].usage_reported = false;
        let e = |k: &str, b: &str| RequestResult {
            error: Some((k.to_string(), b.to_string())),
            ..Default::default()
        };
        results.push(e("http_429", "first 429"));
        results.push(e("http_429", "second 429"));
        results.push(e("transport", "connection refused"));
        let g: GoodputTargets = "ttft:500".parse().unwrap();
        let l = aggregate(Level::Concurrency(4), &results, 2.0, (1, 0), Some(&g));
        assert_eq!(l.label, "concurrency 4");
        assert_eq!((l.requests, l.completed, l.failed), (6, 3, 3));
        assert_eq!(l.total_output_tokens, 40);
        assert_eq!(l.total_prompt_tokens, 15);
        assert!(close(l.request_throughput, 1.5));
        assert!(close(l.output_throughput, 20.0));
        assert!(close(l.total_token_throughput, 27.5));
        assert_eq!(l.good_requests, Some(2));
        assert!(close(l.goodput.unwrap(), 1.0));
        assert_eq!(l.output_tokens_counted_from_chunks, 1);
        assert_eq!(
            l.errors["http_429"],
            ErrorStat {
                count: 2,
                first: "first 429".into()
            }
        );
        assert_eq!(l.errors["transport"].count, 1);
        assert_eq!(l.itl_ms.unwrap().n, 6);
        assert!(close(l.ttft_ms.unwrap().p50, 200.0));
        assert!(close(l.e2e_ms.unwrap().mean, 2000.0));
        assert_eq!(l.warmup_requests, 1);
        let no_targets = aggregate(Level::Rate(f64::INFINITY), &results, 2.0, (0, 0), None);
        assert_eq!(no_targets.goodput, None);
        assert_eq!(no_targets.request_rate, None);
        assert_eq!(no_targets.label, "rate inf");
    }
}
