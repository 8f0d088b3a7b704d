//! Long documents: splitting text into overlapping chunks that each fit a token budget, cut at
//! paragraph or sentence boundaries (Chinese `。！？` and English `. ! ?`), for map-reduce
//! summarisation (`POST /v1/summarize`, [`crate::routes::summarize`]).
//!
//! Pure functions: the token counter is passed in (the model's tokenizer in the server, a
//! character counter in unit tests).

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's text (a contiguous slice of the document, `start..end` in bytes).
    pub text: String,
    pub start: usize,
    pub end: usize,
    /// Tokens of `text` as counted by the counter (never above the budget).
    pub tokens: usize,
}

/// Why a document cannot be chunked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The budget is 0 tokens.
    #[error("the chunk budget must be at least 1 token")]
    ZeroBudget,
    /// A single character is over the budget (cannot happen with a real tokenizer and a budget
    /// of a few tokens).
    #[error("one character of the document is {tokens} tokens, over the chunk budget of {budget}")]
    CharOverBudget { tokens: usize, budget: usize },
}

/// Sentence-ending characters (Chinese full-width and English).
const SENTENCE_END: &[char] = &['。', '！', '？', '!', '?', '.', '…'];
/// Closing quotes and brackets that stay with the sentence before them.
const CLOSERS: &[char] = &['」', '』', '”', '’', '"', '\'', ')', '）', '】', '》'];
/// Clause separators, used to cut a sentence that is over the budget on its own.
const CLAUSE_END: &[char] = &['，', '；', '：', '、', ',', ';', ':'];

/// A piece of the document between cut points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: usize,
    end: usize,
    /// The segment ends a paragraph (a newline follows its text).
    para_end: bool,
}

/// Splits `text` into segments ending at sentence ends (plus their closing quotes and following
/// whitespace) or newlines. English `.` counts only before whitespace or the end (so `3.5` and
/// `e.g.x` do not cut). The segments cover the text exactly, in order.
fn segments(text: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        let next = chars.get(i + 1).map(|&(_, c)| c);
        let is_end = match c {
            '\n' => true,
            '.' => next.is_none_or(|n| n.is_whitespace() || CLOSERS.contains(&n)),
            c => SENTENCE_END.contains(&c),
        };
        if is_end {
            let mut j = i + 1;
            // Runs of terminators ("？！", "..."), then closers, then whitespace.
            while j < chars.len() && SENTENCE_END.contains(&chars[j].1) {
                j += 1;
            }
            while j < chars.len() && CLOSERS.contains(&chars[j].1) {
                j += 1;
            }
            let mut para_end = c == '\n';
            while j < chars.len() && chars[j].1.is_whitespace() {
                para_end |= chars[j].1 == '\n';
                j += 1;
            }
            let end = chars.get(j).map(|&(b, _)| b).unwrap_or(text.len());
            out.push(Segment {
                start,
                end,
                para_end,
            });
            start = end;
            i = j;
        } else {
            i += 1;
        }
    }
    if start < text.len() {
        out.push(Segment {
            start,
            end: text.len(),
            para_end: true,
        });
    }
    out
}

/// Cuts an over-budget segment at clause separators, then whitespace, then characters, into
/// pieces each within `budget` tokens.
fn split_long(
    text: &str,
    seg: Segment,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<Vec<Segment>, ChunkError> {
    let s = &text[seg.start..seg.end];
    // Candidate cut points (byte offsets within s, after the separator), by preference.
    let cuts_after = |pred: &dyn Fn(char) -> bool| -> Vec<usize> {
        s.char_indices()
            .filter(|&(_, c)| pred(c))
            .map(|(i, c)| i + c.len_utf8())
            .filter(|&i| i < s.len())
            .collect()
    };
    let clause = cuts_after(&|c| CLAUSE_END.contains(&c));
    let space = cuts_after(&char::is_whitespace);
    let chars = cuts_after(&|_| true);
    let mut out = Vec::new();
    let mut from = 0;
    while from < s.len() {
        if count(&s[from..]) <= budget {
            out.push(from..s.len());
            break;
        }
        // The furthest cut within budget, trying each kind of cut point in turn.
        let mut best = None;
        for cuts in [&clause, &space, &chars] {
            let cands: Vec<usize> = cuts.iter().copied().filter(|&c| c > from).collect();
            // Binary search for the last candidate whose piece fits.
            let (mut lo, mut hi) = (0usize, cands.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if count(&s[from..cands[mid]]) <= budget {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if lo > 0 {
                best = Some(cands[lo - 1]);
                break;
            }
        }
        let Some(cut) = best else {
            let c = s[from..]
                .chars()
                .next()
                .map(|c| c.to_string())
                .unwrap_or_default();
            return Err(ChunkError::CharOverBudget {
                tokens: count(&c),
                budget,
            });
        };
        out.push(from..cut);
        from = cut;
    }
    let n = out.len();
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(k, r)| Segment {
            start: seg.start + r.start,
            end: seg.start + r.end,
            para_end: k + 1 == n && seg.para_end,
        })
        .collect())
}

/// Splits `text` into chunks of at most `budget` tokens each (as `count` measures the chunk's
/// whole text), cut at sentence or paragraph ends (preferring a paragraph end in the second
/// half of a chunk), where each chunk after the first starts with up to `overlap` tokens of
/// whole sentences from the end of the previous one. A sentence over the budget is cut at
/// clauses, spaces, or characters. Empty or whitespace-only text gives no chunks.
pub fn chunk_text(
    text: &str,
    budget: usize,
    overlap: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<Vec<Chunk>, ChunkError> {
    if budget == 0 {
        return Err(ChunkError::ZeroBudget);
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let overlap = overlap.min(budget / 2);
    let mut segs = Vec::new();
    for seg in segments(text) {
        if count(&text[seg.start..seg.end]) > budget {
            segs.extend(split_long(text, seg, budget, count)?);
        } else {
            segs.push(seg);
        }
    }
    let seg_tokens: Vec<usize> = segs.iter().map(|s| count(&text[s.start..s.end])).collect();
    let mut chunks = Vec::new();
    let mut first = 0; // first segment of the current chunk
    while first < segs.len() {
        // Grow while the whole chunk text fits.
        let mut last = first; // exclusive end
        while last < segs.len() {
            let candidate = &text[segs[first].start..segs[last].end];
            // Cheap bound first; the exact count only when it might not fit.
            let approx: usize = seg_tokens[first..=last].iter().sum();
            if approx > budget.saturating_sub(8) && count(candidate) > budget {
                break;
            }
            last += 1;
        }
        if last == first {
            // A single segment always fits (split_long), but guard anyway.
            last = first + 1;
        }
        // Prefer ending at a paragraph end in the second half of the chunk.
        if last < segs.len() {
            let total: usize = seg_tokens[first..last].iter().sum();
            let mut acc = 0;
            let mut para_cut = None;
            for k in first..last {
                acc += seg_tokens[k];
                if segs[k].para_end && acc * 2 >= total {
                    para_cut = Some(k + 1);
                }
            }
            if let Some(p) = para_cut {
                last = p;
            }
        }
        let (start, end) = (segs[first].start, segs[last - 1].end);
        let body = &text[start..end];
        chunks.push(Chunk {
            text: body.to_string(),
            start,
            end,
            tokens: count(body),
        });
        if last >= segs.len() {
            break;
        }
        // Overlap: whole segments from the end of this chunk, up to `overlap` tokens, but always
        // moving forward.
        let mut next = last;
        let mut acc = 0;
        while next > first + 1 && acc + seg_tokens[next - 1] <= overlap {
            acc += seg_tokens[next - 1];
            next -= 1;
        }
        first = next;
    }
    Ok(chunks)
}

/// Share of CJK ideographs among the non-whitespace characters of `text` (0.0 for empty).
pub fn cjk_share(text: &str) -> f64 {
    let mut total = 0usize;
    let mut cjk = 0usize;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        total += 1;
        if ('\u{4E00}'..='\u{9FFF}').contains(&c) || ('\u{3400}'..='\u{4DBF}').contains(&c) {
            cjk += 1;
        }
    }
    if total == 0 {
        0.0
    } else {
        cjk as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    fn check_cover(text: &str, chunks: &[Chunk]) {
        assert_eq!(chunks.first().map(|c| c.start), Some(0));
        assert_eq!(chunks.last().map(|c| c.end), Some(text.len()));
        for w in chunks.windows(2) {
            assert!(w[1].start <= w[0].end, "gap between chunks");
            assert!(w[1].start > w[0].start, "no progress");
        }
        for c in chunks {
            assert_eq!(&text[c.start..c.end], c.text);
        }
    }

    #[test]
    fn segments_cover_and_cut_at_sentence_ends() {
        let t = "第一句。第二句！「第三句？」\n\nFirst one. Pi is 3.14 here! Last";
        let s = segments(t);
        let parts: Vec<&str> = s.iter().map(|g| &t[g.start..g.end]).collect();
        assert_eq!(
            parts,
            vec![
                "第一句。",
                "第二句！",
                "「第三句？」\n\n",
                "First one. ",
                "Pi is 3.14 here! ",
                "Last"
            ]
        );
        assert!(s[2].para_end && !s[0].para_end && s[5].para_end);
        assert_eq!(parts.concat(), t);
    }

    #[test]
    fn chunks_fit_the_budget_and_overlap() {
        let sentence = "政府今日公布新措施。";
        let text: String = (0..40)
            .map(|i| format!("{sentence}第{i}項。"))
            .collect::<Vec<_>>()
            .join("");
        let chunks = chunk_text(&text, 50, 10, &chars).unwrap();
        assert!(chunks.len() > 5, "{}", chunks.len());
        check_cover(&text, &chunks);
        for c in &chunks {
            assert!(c.tokens <= 50 && chars(&c.text) == c.tokens);
            // Every chunk ends at a sentence end.
            assert!(c.text.ends_with('。'), "{}", c.text);
        }
        // Consecutive chunks overlap by whole sentences.
        for w in chunks.windows(2) {
            let shared = &text[w[1].start..w[0].end];
            assert!(!shared.is_empty() && chars(shared) <= 10, "{shared}");
            assert!(shared.ends_with('。'));
        }
    }

    #[test]
    fn paragraph_ends_are_preferred() {
        let para = |n: usize| format!("{}\n\n", "Short sentence here. ".repeat(n));
        let text = format!("{}{}{}", para(3), para(3), para(3));
        // 3 sentences = 63 chars + 2 newlines; budget fits ~4.5 sentences.
        let chunks = chunk_text(&text, 100, 0, &chars).unwrap();
        check_cover(&text, &chunks);
        assert!(
            chunks.iter().all(|c| c.text.ends_with("\n\n")),
            "{chunks:#?}"
        );
    }

    #[test]
    fn overlong_sentences_are_cut_at_clauses_then_characters() {
        let text = format!("{}。", "甲乙丙丁，".repeat(30));
        let chunks = chunk_text(&text, 12, 0, &chars).unwrap();
        check_cover(&text, &chunks);
        for c in &chunks {
            assert!(c.tokens <= 12);
        }
        assert!(chunks[0].text.ends_with('，'), "{}", chunks[0].text);
        let text = "x".repeat(95);
        let chunks = chunk_text(&text, 10, 3, &chars).unwrap();
        check_cover(&text, &chunks);
        assert_eq!(chunks.len(), 10);
        assert!(chunks.iter().all(|c| c.tokens <= 10));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(chunk_text("", 10, 2, &chars).unwrap(), vec![]);
        assert_eq!(chunk_text("  \n", 10, 2, &chars).unwrap(), vec![]);
        assert_eq!(chunk_text("abc", 0, 0, &chars), Err(ChunkError::ZeroBudget));
        let one = chunk_text("短句。", 10, 2, &chars).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].text, "短句。");
        // A counter where a character is over budget.
        let e = chunk_text("ab", 1, 0, &|s: &str| s.chars().count() * 2).unwrap_err();
        assert!(matches!(e, ChunkError::CharOverBudget { .. }));
    }

    #[test]
    fn cjk_share_detects_chinese() {
        assert!(cjk_share("政府今日公布 new measures") > 0.2);
        assert!(cjk_share("The Government announced") < 0.01);
        assert_eq!(cjk_share(""), 0.0);
    }
}
