//! Chinese script conversion inside the engine (`GenerateRequest::output_script`), on the default
//! model, which continues a Simplified Chinese prompt in Simplified characters.
//!
//! - Converting while streaming gives exactly the whole-text `s2hk` conversion of what the same
//!   request generates without conversion, and the tokens are the same.
//! - A stop string written in Traditional characters (as the client sees the text) stops
//!   generation where it occurs in the converted text, although the model never generated it in
//!   that form.

mod common;

use common::{collect, greedy, request};
use govlm_inference::config::{DeviceSpec, SchedulerConfig, Source};
use govlm_inference::engine::FinishReason;
use govlm_inference::script::ScriptConverter;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const PROMPT: &str = "香港是一个国际金融中心，这里的经济发展";

#[test]
fn conversion_happens_before_stop_strings() {
    let engine = common::spawn_engine(
        QWEN,
        Source::Gguf,
        2048,
        SchedulerConfig::defaults_for(DeviceSpec::Cpu),
        16,
    );
    let conv = ScriptConverter::s2hk().expect("s2hk");

    let (raw, raw_ids, _) = collect(
        engine
            .submit(request(&engine, PROMPT, 40, greedy()))
            .expect("submit"),
    );
    let mut req = request(&engine, PROMPT, 40, greedy());
    req.output_script = Some(conv.clone());
    let (converted, ids, reason) = collect(engine.submit(req).expect("submit"));
    assert_eq!(ids, raw_ids, "conversion must not change the tokens");
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(converted, conv.convert(&raw));
    assert_ne!(
        converted, raw,
        "expected Simplified output to convert: {raw:?}"
    );

    // The first two characters of the converted text that differ from the raw text, skipping the
    // first character so that some text precedes the stop string.
    let (r, c): (Vec<char>, Vec<char>) = (raw.chars().collect(), converted.chars().collect());
    assert_eq!(r.len(), c.len(), "s2hk maps these characters one to one");
    let at = (1..c.len() - 1)
        .find(|&i| c[i] != r[i])
        .expect("a converted character");
    let stop: String = c[at..at + 2].iter().collect();
    assert!(
        !raw.contains(&stop),
        "{stop:?} must only exist after conversion"
    );
    let want: String = c[..at].iter().collect();
    // The stop string can occur earlier in the converted text than where it was found here.
    let want = match converted.find(&stop) {
        Some(i) if i < want.len() => converted[..i].to_string(),
        _ => want,
    };

    let mut req = request(&engine, PROMPT, 40, greedy());
    req.output_script = Some(conv);
    req.stop = vec![stop.clone()];
    let (text, _, reason) = collect(engine.submit(req).expect("submit"));
    assert_eq!(reason, FinishReason::Stop, "stop {stop:?} in {converted:?}");
    assert_eq!(text, want, "stop {stop:?}");
}
