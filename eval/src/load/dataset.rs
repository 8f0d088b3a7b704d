//! Prompts for the load test: hotline transcripts, documents cut into chunks, any JSONL file
//! with a text field, or synthetic prompts of about N tokens.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Where prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// `<dir>/*.jsonl` hotline calls (field `transcript`), asked for a summary.
    Hotline,
    /// `<dir>/*.txt|*.md` documents cut into chunks, asked for a summary.
    Documents,
    /// Seeded random words, about `--input-tokens` tokens each.
    Synthetic,
    /// Any JSONL file (`--dataset-path`), its `--text-field` sent as the prompt as is.
    Jsonl,
}

/// Errors reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a JSON object: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: no string field `{field}`")]
    MissingField {
        path: PathBuf,
        line: usize,
        field: String,
    },
    #[error("no prompts found in {0}")]
    Empty(PathBuf),
}

/// Words that are one token in the common BPE vocabularies (with a leading space), so a
/// prompt of N words is about N tokens.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "for", "that", "on", "with", "as", "it", "by", "at",
    "from", "this", "be", "are", "was", "or", "an", "have", "not", "which", "they", "you", "has",
    "but", "all", "their", "one", "more", "will", "can", "other", "were", "there", "time", "new",
    "when", "into", "only", "also", "first", "after", "year", "some", "would", "two", "city",
    "water", "road", "street", "park", "school", "house", "market", "office", "public", "service",
    "people", "work", "day", "week", "month", "report", "plan", "case", "call", "help", "light",
    "noise", "tree", "bus", "car", "train", "door", "floor", "room", "food", "health", "money",
    "law", "rule", "staff", "team", "group", "area", "place", "point", "line", "form", "name",
    "number", "night", "morning", "river", "hill", "sea", "wind", "rain", "sun", "fire", "power",
    "data", "system", "change", "issue", "level",
];

/// The instruction put before a hotline transcript.
const HOTLINE_INSTRUCTION: &str =
    "Summarise this call to a government hotline in two sentences, in the caller's language.";

/// The instruction put before a document chunk.
const DOCUMENT_INSTRUCTION: &str = "Summarise the following text in three sentences.";

/// A synthetic prompt of `tokens` words chosen by `rng` from the fixed word list.
pub fn synthetic_prompt(tokens: usize, rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(tokens * 6);
    for i in 0..tokens {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

/// `count` distinct synthetic prompts of about `tokens` tokens each, seeded.
pub fn synthetic(tokens: usize, count: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count.max(1))
        .map(|_| synthetic_prompt(tokens.max(1), &mut rng))
        .collect()
}

/// The string `field` of every line of a JSONL file (blank lines skipped).
///
/// Errors: unreadable file, a line that is not a JSON object, a line without the field.
pub fn jsonl_field(path: &Path, field: &str) -> Result<Vec<String>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| DatasetError::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })?;
        match v.get(field).and_then(|f| f.as_str()) {
            Some(s) => out.push(s.to_string()),
            None => {
                return Err(DatasetError::MissingField {
                    path: path.to_path_buf(),
                    line: i + 1,
                    field: field.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Files in `dir` whose names end with one of `exts`, sorted by name.
fn files_with(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, DatasetError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| exts.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Hotline prompts: the `transcript` of every line of every `*.jsonl` in `dir` (or of the file
/// `dir` itself), each after a summarisation instruction.
pub fn hotline(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        files_with(dir, &["jsonl"])?
    };
    let mut out = Vec::new();
    for f in files {
        for t in jsonl_field(&f, "transcript")? {
            out.push(format!("{HOTLINE_INSTRUCTION}\n\n{t}"));
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(dir.to_path_buf()));
    }
    Ok(out)
}

/// Cuts text into chunks of at most `max_chars` characters at paragraph boundaries (a
/// paragraph longer than that is cut at character boundaries).
pub fn chunk_text(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut chunks = Vec::new();
    let mut cur = String::new();
    let mut cur_chars = 0;
    for para in text.split('\n').map(str::trim).filter(|p| !p.is_empty()) {
        let n = para.chars().count();
        if cur_chars > 0 && cur_chars + 1 + n > max_chars {
            chunks.push(std::mem::take(&mut cur));
            cur_chars = 0;
        }
        if n > max_chars {
            let chars: Vec<char> = para.chars().collect();
            for piece in chars.chunks(max_chars) {
                chunks.push(piece.iter().collect());
            }
            continue;
        }
        if cur_chars > 0 {
            cur.push('\n');
            cur_chars += 1;
        }
        cur.push_str(para);
        cur_chars += n;
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

/// Document prompts: every `*.txt` / `*.md` file in `dir` (or the file `dir`), cut into chunks
/// of at most `chunk_chars` characters, each after a summarisation instruction.
pub fn documents(dir: &Path, chunk_chars: usize) -> Result<Vec<String>, DatasetError> {
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        files_with(dir, &["txt", "md"])?
    };
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| DatasetError::Io {
            path: f.clone(),
            source,
        })?;
        for c in chunk_text(&text, chunk_chars) {
            out.push(format!("{DOCUMENT_INSTRUCTION}\n\n{c}"));
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(dir.to_path_buf()));
    }
    Ok(out)
}

/// Shuffles prompts with a seed (the same seed gives the same order).
pub fn shuffle(prompts: &mut [String], seed: u64) {
    prompts.shuffle(&mut StdRng::seed_from_u64(seed));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
    }

    #[test]
    fn synthetic_prompts_are_seeded_and_sized() {
        let a = synthetic(50, 3, 1);
        assert_eq!(a, synthetic(50, 3, 1));
        assert_ne!(a, synthetic(50, 3, 2));
        assert_eq!(a.len(), 3);
        assert_ne!(a[0], a[1]);
        assert!(a.iter().all(|p| p.split(' ').count() == 50));
    }

    #[test]
    fn chunks_respect_the_limit_and_keep_all_text() {
        let text = "一二三\n\n四五六七\nabcdefghij\n\nxy\n";
        let c = chunk_text(text, 8);
        assert!(c.iter().all(|x| x.chars().count() <= 8), "{c:?}");
        let joined: String = c.concat().chars().filter(|ch| *ch != '\n').collect();
        assert_eq!(joined, "一二三四五六七abcdefghijxy");
        assert_eq!(chunk_text("", 5), Vec::<String>::new());
    }

    #[test]
    fn hotline_and_documents_read_the_shared_data() {
        let h = hotline(&shared().join("hotline")).unwrap();
        assert!(h.len() >= 10);
        assert!(h
            .iter()
            .all(|p| p.starts_with(HOTLINE_INSTRUCTION) && p.contains("Caller:")));
        let d = documents(&shared().join("documents"), 1500).unwrap();
        assert!(d.len() >= 2);
        assert!(d
            .iter()
            .all(|p| p.chars().count() <= 1500 + DOCUMENT_INSTRUCTION.len() + 2));
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("govlm-eval-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.jsonl");
        std::fs::write(&p, "{\"text\":\"a\"}\n\n{\"other\":1}\n").unwrap();
        match jsonl_field(&p, "text") {
            Err(DatasetError::MissingField { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
        std::fs::write(&p, "{\"text\":\"a\"}\nnot json\n").unwrap();
        assert!(matches!(
            jsonl_field(&p, "text"),
            Err(DatasetError::BadLine { line: 2, .. })
        ));
        std::fs::write(&p, "{\"text\":\"a\"}\n{\"text\":\"b\"}\n").unwrap();
        assert_eq!(jsonl_field(&p, "text").unwrap(), ["a", "b"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(hotline(&dir), Err(DatasetError::Io { .. })));
    }
}
