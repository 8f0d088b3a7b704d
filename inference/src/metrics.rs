//! Engine metrics, registered in a caller-owned Prometheus [`Registry`] (no global registry).
//!
//! Every series carries a constant `model` label, so one registry serves several engines. The
//! engine thread updates them; the HTTP server encodes the registry for `GET /metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Handles to one engine's metrics (cheap to clone; updates are atomic).
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    /// Sequences in the running set.
    pub running: IntGauge,
    /// Requests accepted but not yet admitted (including preempted sequences).
    pub waiting: IntGauge,
    /// KV blocks referenced by a running sequence.
    pub kv_blocks_used: IntGauge,
    /// KV blocks that can be allocated (never used, freed, or evictable cached blocks).
    pub kv_blocks_free: IntGauge,
    /// Unreferenced KV blocks still holding a cached prefix (a subset of the free blocks).
    pub kv_blocks_cached: IntGauge,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: IntCounter,
    /// Prompt tokens found in the prefix cache.
    pub prefix_cache_hits: IntCounter,
    /// Prompt tokens of finished requests.
    pub prompt_tokens: IntCounter,
    /// Generated tokens.
    pub generation_tokens: IntCounter,
    /// Seconds from submission to the first generated token.
    pub time_to_first_token: Histogram,
    /// Seconds between consecutive generated tokens of one sequence.
    pub inter_token_latency: Histogram,
    /// Seconds from submission to the end of the request.
    pub e2e_latency: Histogram,
    /// Tokens in one forward step.
    pub step_tokens: Histogram,
    /// Sequences in one forward step.
    pub step_sequences: Histogram,
    /// Requests refused because the waiting queue was full (HTTP 429).
    pub rejected: IntCounter,
    /// Requests whose client went away before they finished.
    pub cancelled: IntCounter,
    /// Sequences preempted (blocks freed, recomputed later) because the KV pool ran out.
    pub preemptions: IntCounter,
    /// Finished requests by reason (`stop`, `length`, `error`).
    pub finished: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

impl EngineMetrics {
    /// Creates the metrics of model `model` and registers them in `registry`.
    ///
    /// Errors: a metric of the same name and `model` label is already registered.
    pub fn register(registry: &Registry, model: &str) -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .namespace("govlm")
                .const_label("model", model)
        };
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .namespace("govlm")
                .const_label("model", model)
                .buckets(buckets.to_vec())
        };
        let m = Self {
            running: IntGauge::with_opts(opts("running_sequences", "Sequences running."))?,
            waiting: IntGauge::with_opts(opts(
                "waiting_sequences",
                "Requests accepted and waiting to run (including preempted ones).",
            ))?,
            kv_blocks_used: IntGauge::with_opts(opts(
                "kv_blocks_used",
                "KV cache blocks referenced by running sequences.",
            ))?,
            kv_blocks_free: IntGauge::with_opts(opts(
                "kv_blocks_free",
                "KV cache blocks available for allocation (free or evictable).",
            ))?,
            kv_blocks_cached: IntGauge::with_opts(opts(
                "kv_blocks_cached",
                "Unreferenced KV cache blocks holding a cached prefix (evictable).",
            ))?,
            prefix_cache_queries: IntCounter::with_opts(opts(
                "prefix_cache_queried_tokens_total",
                "Prompt tokens looked up in the prefix cache.",
            ))?,
            prefix_cache_hits: IntCounter::with_opts(opts(
                "prefix_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache.",
            ))?,
            prompt_tokens: IntCounter::with_opts(opts(
                "prompt_tokens_total",
                "Prompt tokens of finished requests.",
            ))?,
            generation_tokens: IntCounter::with_opts(opts(
                "generation_tokens_total",
                "Generated tokens.",
            ))?,
            time_to_first_token: Histogram::with_opts(hist(
                "time_to_first_token_seconds",
                "Time from submission to the first generated token.",
                LATENCY_BUCKETS,
            ))?,
            inter_token_latency: Histogram::with_opts(hist(
                "inter_token_latency_seconds",
                "Time between consecutive generated tokens of a sequence.",
                LATENCY_BUCKETS,
            ))?,
            e2e_latency: Histogram::with_opts(hist(
                "e2e_request_latency_seconds",
                "Time from submission to the end of a request.",
                LATENCY_BUCKETS,
            ))?,
            step_tokens: Histogram::with_opts(hist(
                "step_batch_tokens",
                "Tokens in one forward step (decodes plus prefill chunks).",
                SIZE_BUCKETS,
            ))?,
            step_sequences: Histogram::with_opts(hist(
                "step_batch_sequences",
                "Sequences in one forward step.",
                SIZE_BUCKETS,
            ))?,
            rejected: IntCounter::with_opts(opts(
                "requests_rejected_total",
                "Requests refused with 429 because the waiting queue was full.",
            ))?,
            cancelled: IntCounter::with_opts(opts(
                "requests_cancelled_total",
                "Requests cancelled because the client went away.",
            ))?,
            preemptions: IntCounter::with_opts(opts(
                "preemptions_total",
                "Sequences preempted because the KV pool ran out (recomputed later).",
            ))?,
            finished: IntCounterVec::new(
                opts("requests_finished_total", "Finished requests by reason."),
                &["reason"],
            )?,
        };
        registry.register(Box::new(m.running.clone()))?;
        registry.register(Box::new(m.waiting.clone()))?;
        registry.register(Box::new(m.kv_blocks_used.clone()))?;
        registry.register(Box::new(m.kv_blocks_free.clone()))?;
        registry.register(Box::new(m.kv_blocks_cached.clone()))?;
        registry.register(Box::new(m.prefix_cache_queries.clone()))?;
        registry.register(Box::new(m.prefix_cache_hits.clone()))?;
        registry.register(Box::new(m.prompt_tokens.clone()))?;
        registry.register(Box::new(m.generation_tokens.clone()))?;
        registry.register(Box::new(m.time_to_first_token.clone()))?;
        registry.register(Box::new(m.inter_token_latency.clone()))?;
        registry.register(Box::new(m.e2e_latency.clone()))?;
        registry.register(Box::new(m.step_tokens.clone()))?;
        registry.register(Box::new(m.step_sequences.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.cancelled.clone()))?;
        registry.register(Box::new(m.preemptions.clone()))?;
        registry.register(Box::new(m.finished.clone()))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_models_share_a_registry_and_encode() {
        let registry = Registry::new();
        let a = EngineMetrics::register(&registry, "a").unwrap();
        let b = EngineMetrics::register(&registry, "b").unwrap();
        a.prompt_tokens.inc_by(3);
        b.time_to_first_token.observe(0.2);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("govlm_prompt_tokens_total{model=\"a\"} 3"),
            "{text}"
        );
        assert!(text.contains("govlm_time_to_first_token_seconds_count{model=\"b\"} 1"));
        assert!(EngineMetrics::register(&registry, "a").is_err());
    }
}
