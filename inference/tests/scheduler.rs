//! Continuous batching with a paged KV cache: results never depend on what else runs, on the
//! prefix cache, on chunked prefill or on preemption; cancellation frees blocks; a full waiting
//! queue refuses at once; batch-priority work yields to interactive requests.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{collect, greedy, request};
use govlm_inference::config::{DeviceSpec, KvMemory, SchedulerConfig, Source};
use govlm_inference::engine::{EngineHandle, Event, FinishReason, Priority, SubmitError};
use govlm_inference::sampling::SamplingParams;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// Bytes of KV cache per token of SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x (K, V) x f32.
const SMOLLM2_KV_BYTES_PER_TOKEN: u64 = 30 * 3 * 64 * 2 * 4;

fn spawn(file: &str, scheduler: SchedulerConfig, max_waiting: usize) -> EngineHandle {
    common::spawn_engine(file, Source::Gemma, 2048, scheduler, max_waiting)
}

fn sched(f: impl FnOnce(&mut SchedulerConfig)) -> SchedulerConfig {
    let mut c = SchedulerConfig::defaults_for(DeviceSpec::Cpu);
    c.kv_cache_memory = KvMemory::Bytes(256 << 20);
    f(&mut c);
    c
}

/// Eight prompts of different lengths, English and Chinese; the last is long enough to be
/// prefilled over several steps with a small token budget.
fn prompts() -> Vec<String> {
    let mut p: Vec<String> = [
        "The history of Hong Kong",
        "Dear Sir or Madam,\n\nThank you for your letter of 3 March about the bus route",
        "香港特別行政區政府",
        "請用三句話介紹維多利亞港的歷史。",
        "def fibonacci(n):",
        "A list of the planets of the solar system, in order from the Sun:",
        "政府今日公布，由下月起，",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    p.push(
        "The Legislative Council asked the Government about public housing. ".repeat(12)
            + "In reply, the Secretary said",
    );
    p
}

/// Each of 8 concurrent greedy requests returns exactly what it returns alone, with a small
/// step budget so that chunked prefills and decodes of different sequences share steps.
fn concurrent_equals_alone(file: &str) {
    let e = spawn(file, sched(|c| c.max_batch_tokens = 64), 64);
    let prompts = prompts();
    let alone: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            collect(
                e.submit(request(&e, p, 6 + 2 * i, greedy()))
                    .expect("submit"),
            )
        })
        .collect();
    let rxs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            e.submit(request(&e, p, 6 + 2 * i, greedy()))
                .expect("submit")
        })
        .collect();
    for (i, (rx, a)) in rxs.into_iter().zip(&alone).enumerate() {
        let t = collect(rx);
        assert_eq!(
            a.1, t.1,
            "{file}: prompt {i} {:?} differs batched",
            prompts[i]
        );
        assert_eq!(a.0, t.0);
        assert_eq!(t.2, FinishReason::Length);
    }
}

#[test]
fn eight_concurrent_equal_alone_smollm2() {
    concurrent_equals_alone(SMOLLM2);
}

#[test]
fn eight_concurrent_equal_alone_qwen2() {
    concurrent_equals_alone(QWEN);
}

#[test]
fn eight_concurrent_equal_alone_gemma3() {
    concurrent_equals_alone(GEMMA);
}

/// A shared long prefix is served from the prefix cache, and the text is the same as with the
/// cache disabled (greedy and seeded sampling).
#[test]
fn prefix_cache_hit_gives_same_text_as_cache_disabled() {
    let system = "You are a helpful assistant of the 1823 government hotline. Summarise the call \
                  transcript below in two sentences, in English, without personal data. "
        .repeat(4);
    let calls = [
        "Caller: The street light outside 12 Nathan Road has been broken for a week.",
        "Caller: 我想投訴屯門公園附近的噪音問題，每晚都好嘈。",
        "Caller: How do I renew my driving licence online?",
    ];
    let seeded = SamplingParams {
        temperature: 0.8,
        seed: Some(7),
        ..SamplingParams::default()
    };
    let cached = spawn(SMOLLM2, sched(|_| {}), 64);
    let uncached = spawn(SMOLLM2, sched(|c| c.prefix_caching = false), 64);
    for sampling in [greedy(), seeded] {
        for call in calls {
            let prompt = format!("{system}\n{call}\nSummary:");
            let want = collect(
                uncached
                    .submit(request(&uncached, &prompt, 12, sampling.clone()))
                    .expect("submit"),
            );
            let got = collect(
                cached
                    .submit(request(&cached, &prompt, 12, sampling.clone()))
                    .expect("submit"),
            );
            assert_eq!(want.1, got.1, "{call}: cached prefix changed the output");
        }
    }
    let m = cached.metrics();
    let prompt_len = cached.tokenizer().encode(&system, true).unwrap().len() as u64;
    // Every request after the first reuses at least the system prompt's full blocks.
    assert!(
        m.prefix_cache_hits.get() >= 5 * (prompt_len / 16 - 1) * 16,
        "hits {} of {} queried",
        m.prefix_cache_hits.get(),
        m.prefix_cache_queries.get()
    );
    assert_eq!(uncached.metrics().prefix_cache_hits.get(), 0);
}

/// A pool far too small for the load: sequences are preempted and recomputed, and every
/// request still returns its exact text.
#[test]
fn tiny_pool_preempts_and_every_request_is_correct() {
    let blocks = 14u64;
    let tiny = spawn(
        SMOLLM2,
        sched(|c| c.kv_cache_memory = KvMemory::Bytes(blocks * 16 * SMOLLM2_KV_BYTES_PER_TOKEN)),
        64,
    );
    assert_eq!(tiny.info().kv_blocks, blocks as usize);
    let roomy = spawn(SMOLLM2, sched(|_| {}), 64);
    let prompts = prompts();
    let want: Vec<_> = prompts[..6]
        .iter()
        .map(|p| {
            collect(
                roomy
                    .submit(request(&roomy, p, 40, greedy()))
                    .expect("submit"),
            )
        })
        .collect();
    let rxs: Vec<_> = prompts[..6]
        .iter()
        .map(|p| {
            tiny.submit(request(&tiny, p, 40, greedy()))
                .expect("submit")
        })
        .collect();
    for (i, (rx, w)) in rxs.into_iter().zip(&want).enumerate() {
        let got = collect(rx);
        assert_eq!(w.1, got.1, "prompt {i} differs after preemption");
        assert_eq!(w.0, got.0);
    }
    let m = tiny.metrics();
    assert!(m.preemptions.get() > 0, "the tiny pool never preempted");
    wait_until("blocks freed", || m.kv_blocks_used.get() == 0);
    assert_eq!(m.kv_blocks_free.get(), blocks as i64);
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Dropping the receiver cancels the sequence and frees its blocks; the engine keeps serving.
#[test]
fn cancel_frees_blocks() {
    let e = spawn(SMOLLM2, sched(|_| {}), 64);
    let mut rx = e
        .submit(request(&e, "Once upon a time", 1000, greedy()))
        .expect("submit");
    // Wait for generation to be under way.
    loop {
        if let Some(Event::Delta { tokens, .. }) = rx.blocking_recv() {
            if !tokens.is_empty() {
                break;
            }
        }
    }
    let m = e.metrics();
    // Gauges are updated at the end of each step.
    wait_until("blocks in use", || m.kv_blocks_used.get() > 0);
    drop(rx);
    wait_until("cancelled request's blocks freed", || {
        m.cancelled.get() == 1 && m.kv_blocks_used.get() == 0 && m.running.get() == 0
    });
    let (_, ids, _) = collect(e.submit(request(&e, "Hello", 3, greedy())).expect("submit"));
    assert_eq!(ids.len(), 3);
}

/// With one sequence running at a time and room for two waiting, the next submission is
/// refused at once; every accepted request completes.
#[test]
fn full_queue_refuses_and_loses_nothing() {
    let e = spawn(SMOLLM2, sched(|c| c.max_num_seqs = 1), 2);
    let first = e
        .submit(request(&e, "Once upon a time", 300, greedy()))
        .expect("submit");
    wait_until("first request running", || e.metrics().running.get() == 1);
    let accepted: Vec<_> = (0..2)
        .map(|i| {
            e.submit(request(&e, &format!("Story {i}:"), 4, greedy()))
                .expect("room for two waiting")
        })
        .collect();
    let err = e
        .submit(request(&e, "One too many", 4, greedy()))
        .expect_err("queue is full");
    assert!(
        matches!(err, SubmitError::QueueFull { capacity: 2, .. }),
        "{err:?}"
    );
    assert_eq!(e.metrics().rejected.get(), 1);
    assert_eq!(collect(first).1.len(), 300);
    for rx in accepted {
        assert_eq!(collect(rx).1.len(), 4);
    }
}

/// Interactive requests are admitted before batch-priority ones that arrived earlier.
#[test]
fn interactive_overtakes_waiting_batch_work() {
    let e = spawn(SMOLLM2, sched(|c| c.max_num_seqs = 1), 16);
    let order = Arc::new(Mutex::new(Vec::new()));
    let first = e
        .submit(request(&e, "Once upon a time", 300, greedy()))
        .expect("submit");
    wait_until("first request running", || e.metrics().running.get() == 1);
    let mut batch = request(&e, "Batch line:", 4, greedy());
    batch.priority = Priority::Batch;
    let rx_batch = e.submit(batch).expect("submit");
    let rx_inter = e
        .submit(request(&e, "Interactive:", 4, greedy()))
        .expect("submit");
    let threads: Vec<_> = [("batch", rx_batch), ("interactive", rx_inter)]
        .into_iter()
        .map(|(name, rx)| {
            let order = order.clone();
            std::thread::spawn(move || {
                collect(rx);
                order.lock().unwrap().push(name);
            })
        })
        .collect();
    collect(first);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec!["interactive", "batch"]);
}
