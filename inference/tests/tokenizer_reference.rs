//! Tokenizers built from GGUF metadata checked against the reference HF tokenizer.json files
//! (token for token), llama.cpp's prompt token ids, and the streaming decoder invariants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use govlm_inference::tokenizer::{StreamDecoder, Tokenizer};

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

fn model_path(rel: &str) -> PathBuf {
    let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).join(rel);
    if !p.exists() {
        panic!(
            "model file {} missing: run `make models` first",
            p.display()
        );
    }
    p
}

fn metadata(file: &str) -> HashMap<String, Value> {
    let path = model_path(file);
    let mut f = std::fs::File::open(&path).expect("open gguf");
    Content::read(&mut f).expect("read gguf").metadata
}

fn gguf_tokenizer(file: &str) -> Tokenizer {
    Tokenizer::from_gguf(&metadata(file)).expect("tokenizer from gguf")
}

fn reference(dir: &str) -> tokenizers::Tokenizer {
    let p = model_path(&format!("reference/{dir}/tokenizer.json"));
    tokenizers::Tokenizer::from_file(p).expect("load reference tokenizer.json")
}

/// (category, text) pairs covering the scripts and whitespace cases we must get right.
fn texts() -> Vec<(&'static str, String)> {
    vec![
        ("english", "The quick brown fox jumps over the lazy dog. It's 5 o'clock; don't you think we'll be LATE?".into()),
        ("english", "Hello world".into()),
        ("traditional_chinese", "香港特別行政區政府今日公佈，創新科技及工業局將於下週舉行記者會。".into()),
        ("simplified_chinese", "中华人民共和国国务院今天发布了关于促进经济发展的意见。".into()),
        ("cantonese", "佢哋喺度食緊嘢，唔該晒！你今日得唔得閒呀？冇問題啦。".into()),
        ("emoji", "I love 🍕 and 🎉! Family: 👨‍👩‍👧‍👦, flags: 🇭🇰🇹🇼🇯🇵, skin: 👍🏽, heart: ❤️ 🫠".into()),
        ("tabs", "col1\tcol2\t\tcol3\n\tindented\t\t\tthree tabs\t".into()),
        ("crlf", "line one\r\nline two\r\n\r\nline four\r\n".into()),
        ("spaces_newlines", "a  b   c    d\n\n\ne     f\n\n\n\n\ng          h".into()),
        ("spaces_newlines", "  leading and trailing  \n \n  ".into()),
        ("spaces_newlines", format!("x{}y{}z", " ".repeat(20), "\n".repeat(12))),
        ("long_whitespace", format!("a{}b{}c{}d", " ".repeat(45), "\n".repeat(40), "\t".repeat(70))),
        ("fullwidth", "ＡＢＣ１２３，。！？ｈｅｌｌｏ　ｗｏｒｌｄ".into()),
        ("numbers", "1234567890 3.14159 1,000,000 and 2026-11-29 or 0x1F; 42nd".into()),
        ("code", "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n\ndef f(n):\n\treturn n ** 2  # square\n".into()),
        ("mixed", "Hello世界123 مرحبا Привет こんにちは 안녕하세요 naïve café".into()),
        ("special_tokens", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好，世界！<|im_end|>\n<|im_start|>assistant\n".into()),
        ("special_tokens", "<start_of_turn>user\n佢哋喺度食緊嘢<end_of_turn>\n<start_of_turn>model\nHi<end_of_turn>".into()),
        ("special_tokens", "text<|endoftext|>more<bos>x<eos>".into()),
        ("edge", "".into()),
        ("edge", " ".into()),
        ("edge", "\n".into()),
    ]
}

/// Compares our GGUF-built tokenizer with the HF reference on every text; returns failures.
fn compare_with_reference(ours: &Tokenizer, reference: &tokenizers::Tokenizer) -> Vec<String> {
    let mut failures = Vec::new();
    let mut per_category: Vec<(&str, bool)> = Vec::new();
    for (cat, text) in texts() {
        let mut ok = true;
        for add_special in [false, true] {
            let want = reference
                .encode(text.as_str(), add_special)
                .expect("reference encode");
            let want = want.get_ids().to_vec();
            let got = ours.encode(&text, add_special).expect("our encode");
            if got != want {
                ok = false;
                failures.push(format!(
                    "[{cat}] add_special={add_special} {text:?}\n  ours: {got:?}\n  ref:  {want:?}"
                ));
                continue;
            }
            for skip in [false, true] {
                let want_text = reference.decode(&want, skip).expect("reference decode");
                let got_text = ours.decode(&got, skip).expect("our decode");
                if got_text != want_text {
                    ok = false;
                    failures.push(format!(
                        "[{cat}] decode skip={skip} {text:?}\n  ours: {got_text:?}\n  ref:  {want_text:?}"
                    ));
                }
            }
        }
        // Round trip without BOS keeps the text exactly (special tokens kept as text).
        let ids = ours.encode(&text, false).expect("encode");
        let back = ours.decode(&ids, false).expect("decode");
        if back != text {
            ok = false;
            failures.push(format!("[{cat}] round trip {text:?} -> {back:?}"));
        }
        per_category.push((cat, ok));
    }
    for (cat, ok) in per_category {
        eprintln!("  {cat:<20} {}", if ok { "ok" } else { "MISMATCH" });
    }
    failures
}

#[test]
fn qwen_gguf_matches_reference_tokenizer_json() {
    let ours = gguf_tokenizer(QWEN);
    let reference = reference("qwen");
    eprintln!("qwen:");
    let failures = compare_with_reference(&ours, &reference);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Qwen splits digits one by one.
    let ids = ours.encode("12345", false).expect("encode");
    assert_eq!(ids.len(), 5);
}

#[test]
fn gemma_gguf_matches_reference_tokenizer_json() {
    let ours = gguf_tokenizer(GEMMA);
    let reference = reference("gemma3");
    eprintln!("gemma3:");
    let failures = compare_with_reference(&ours, &reference);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // "world" is a single piece (a Unigram model would split it).
    let ids = ours.encode(" world", false).expect("encode");
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[test]
fn from_tokenizer_json_matches_gguf_tokenizer() {
    for (file, dir) in [(QWEN, "qwen"), (GEMMA, "gemma3")] {
        let meta = metadata(file);
        let from_gguf = Tokenizer::from_gguf(&meta).expect("gguf");
        let json_path = model_path(&format!("reference/{dir}/tokenizer.json"));
        let from_json = Tokenizer::from_tokenizer_json(&json_path, &meta).expect("json");
        for (cat, text) in texts() {
            for add_bos in [false, true] {
                assert_eq!(
                    from_json.encode(&text, add_bos).expect("encode"),
                    from_gguf.encode(&text, add_bos).expect("encode"),
                    "{file} [{cat}] add_bos={add_bos} {text:?}"
                );
            }
        }
        assert_eq!(from_json.bos_token(), from_gguf.bos_token(), "{file}");
        assert_eq!(
            from_json.eos_token_ids(),
            from_gguf.eos_token_ids(),
            "{file}"
        );
    }
}

/// One line of llama_cpp_greedy.jsonl.
struct RefLine {
    model_file: String,
    prompt: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
}

fn reference_lines() -> Vec<RefLine> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/reference/llama_cpp_greedy.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("id array")
            .iter()
            .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
            .collect()
    };
    let lines: Vec<RefLine> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            RefLine {
                model_file: v["model_file"].as_str().expect("model_file").to_string(),
                prompt: v["prompt"].as_str().expect("prompt").to_string(),
                prompt_ids: ids(&v["prompt_token_ids"]),
                output_ids: ids(&v["output_token_ids"]),
            }
        })
        .collect();
    assert_eq!(lines.len(), 18, "expected 3 models x 6 prompts");
    lines
}

fn check_llama_cpp_prompts(file: &str) {
    let tok = gguf_tokenizer(file);
    let mut n = 0;
    for line in reference_lines()
        .into_iter()
        .filter(|l| l.model_file == file)
    {
        let got = tok.encode(&line.prompt, true).expect("encode");
        assert_eq!(got, line.prompt_ids, "{file}: prompt {:?}", line.prompt);
        n += 1;
    }
    assert_eq!(n, 6, "{file}: expected 6 reference prompts");
}

#[test]
fn llama_cpp_prompt_ids_smollm2() {
    check_llama_cpp_prompts(SMOLLM);
}

#[test]
fn llama_cpp_prompt_ids_qwen() {
    check_llama_cpp_prompts(QWEN);
}

#[test]
fn llama_cpp_prompt_ids_gemma() {
    check_llama_cpp_prompts(GEMMA);
}

/// Feeds ids one by one; checks no delta has U+FFFD and the deltas add up to the full decode.
fn check_stream(tok: &Tokenizer, ids: &[u32], what: &str) -> Vec<String> {
    let mut dec = StreamDecoder::new(tok.clone());
    let mut deltas = Vec::new();
    for &id in ids {
        let d = dec.push(id).expect("push");
        assert!(
            !d.contains('\u{FFFD}'),
            "{what}: delta {d:?} contains U+FFFD (ids {ids:?})"
        );
        deltas.push(d);
    }
    let tail = dec.finish();
    let full = tok.decode(ids, true).expect("decode");
    let joined: String = deltas.concat() + &tail;
    assert_eq!(
        joined, full,
        "{what}: concatenated deltas differ from full decode"
    );
    deltas
}

#[test]
fn stream_decoder_on_llama_cpp_outputs() {
    let lines = reference_lines();
    for file in [SMOLLM, QWEN, GEMMA] {
        let tok = gguf_tokenizer(file);
        // The reference outputs split multi-byte characters over tokens: decoding token by
        // token would produce U+FFFD, so this data really exercises the hold-back.
        let split_somewhere = lines
            .iter()
            .filter(|l| l.model_file == file)
            .flat_map(|l| l.output_ids.iter())
            .any(|&id| tok.token_text(id).contains('\u{FFFD}'));
        if file != GEMMA {
            // (Gemma's vocabulary has these CJK characters as whole pieces.)
            assert!(
                split_somewhere,
                "{file}: expected some output token to be a partial character"
            );
        }
        for line in lines.iter().filter(|l| l.model_file == file) {
            check_stream(
                &tok,
                &line.output_ids,
                &format!("{file} output for {:?}", line.prompt),
            );
            // The prompt and output together, as the engine would see a whole sequence.
            let mut all = line.prompt_ids.clone();
            all.extend_from_slice(&line.output_ids);
            check_stream(
                &tok,
                &all,
                &format!("{file} prompt+output {:?}", line.prompt),
            );
        }
    }
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let samples = [
        "香港特別行政區政府今日公佈，佢哋喺度食緊嘢，唔該晒！",
        "Family 👨‍👩‍👧‍👦 flags 🇭🇰🇹🇼 done 🫠🫠",
        "中华人民共和国 ＡＢＣ１２３，。 naïve",
        "  two spaces\n\nand ▁ a literal lower block",
        // Rare CJK extension-B characters: byte-fallback tokens in Gemma.
        "古字𠜎𠝹𠱓𡃁",
    ];
    for file in [SMOLLM, QWEN, GEMMA] {
        let tok = gguf_tokenizer(file);
        let mut saw_hold = false;
        for s in samples {
            let ids = tok.encode(s, true).expect("encode");
            let deltas = check_stream(&tok, &ids, &format!("{file} {s:?}"));
            saw_hold |= deltas.iter().any(|d| d.is_empty());
            // Without BOS too, and with special tokens interleaved (they must be skipped).
            let ids = tok.encode(s, false).expect("encode");
            check_stream(&tok, &ids, &format!("{file} no-bos {s:?}"));
            let mut with_eos = ids.clone();
            with_eos.extend_from_slice(tok.eos_token_ids());
            check_stream(&tok, &with_eos, &format!("{file} +eos {s:?}"));
        }
        // Characters split over tokens (byte-level BPE, or SentencePiece byte fallback) must
        // have made some pushes hold their text back.
        assert!(
            saw_hold,
            "{file}: expected at least one held-back (empty) delta"
        );
    }
}

#[test]
fn bos_eos_and_special_tokens() {
    let gemma = gguf_tokenizer(GEMMA);
    assert_eq!(gemma.bos_token(), Some("<bos>"));
    assert_eq!(gemma.encode("hi", true).expect("encode").first(), Some(&2));
    assert_eq!(
        gemma
            .encode("hi", false)
            .expect("encode")
            .first()
            .copied()
            .filter(|&i| i == 2),
        None
    );
    let eot = gemma
        .hf()
        .token_to_id("<end_of_turn>")
        .expect("<end_of_turn>");
    assert!(gemma.eos_token_ids().contains(&1) && gemma.eos_token_ids().contains(&eot));
    assert!(gemma.is_special(eot));
    assert_eq!(gemma.vocab_size(), 262144);

    let qwen = gguf_tokenizer(QWEN);
    assert_eq!(qwen.eos_token(), Some("<|im_end|>"));
    assert!(qwen.eos_token_ids().contains(&151645) && qwen.eos_token_ids().contains(&151643));
    assert_eq!(
        qwen.encode("hi", true).expect("encode"),
        qwen.encode("hi", false).expect("encode")
    );
    assert_eq!(qwen.token_text(151644), "<|im_start|>");
    assert_eq!(qwen.vocab_size(), 151936);

    let smol = gguf_tokenizer(SMOLLM);
    assert!(smol.eos_token_ids().contains(&2) && smol.eos_token_ids().contains(&0));
    assert_eq!(smol.encode("<|im_start|>", true).expect("encode"), vec![1]);
    assert!(smol.is_special(1));
    // token_text: a space-prefixed word shows its space.
    let ids = smol.encode(" Kong", false).expect("encode");
    assert_eq!(ids.len(), 1);
    assert_eq!(smol.token_text(ids[0]), " Kong");
    let ids = gemma.encode(" Kong", false).expect("encode");
    assert_eq!(gemma.token_text(ids[0]), " Kong");
}

/// `token_bytes` gives each token's exact bytes: concatenated over llama.cpp's greedy outputs
/// (which split Chinese characters across tokens) they rebuild the decoded text byte for byte.
#[test]
fn token_bytes_rebuild_the_text_exactly() {
    let lines = reference_lines();
    for file in [SMOLLM, QWEN, GEMMA] {
        let tok = gguf_tokenizer(file);
        for line in lines.iter().filter(|l| l.model_file == file) {
            let bytes: Vec<u8> = line
                .output_ids
                .iter()
                .flat_map(|&id| tok.token_bytes(id))
                .collect();
            let text = tok.decode(&line.output_ids, false).expect("decode");
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                text,
                "{file}: {:?}",
                line.prompt
            );
        }
    }
}
