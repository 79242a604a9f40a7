//! Turning an operator's note into token ids for the text graph, exactly as training did.

use std::path::Path;

use anyhow::{Context, anyhow, ensure};
use tokenizers::{PostProcessor, Tokenizer, TruncationParams};

use crate::error::Error;
use crate::model::manifest::TextSpec;

/// The model's own tokenizer with the manifest's truncation, so ids match training.
#[derive(Debug, Clone)]
pub struct NoteTokenizer {
    tokenizer: Tokenizer,
}

impl NoteTokenizer {
    /// Loads `tokenizer.json` at startup, failing loudly if it cannot honour the spec.
    ///
    /// Truncation is set to `spec.max_tokens` with the library's defaults (longest first, from
    /// the right, no stride), the same as `enable_truncation(max_length)` in Python, so the
    /// special tokens survive truncation. Padding is switched off: batches are padded by
    /// [`pad_batch`] to their longest note.
    pub fn load(path: &Path, spec: &TextSpec) -> anyhow::Result<Self> {
        let shown = path.display();
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot load tokenizer {shown}"))?;
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        ensure!(
            spec.max_tokens > special,
            "tokenizer {shown} adds {special} special tokens, text.max_tokens {} leaves no room",
            spec.max_tokens
        );
        ensure!(
            tokenizer.id_to_token(spec.pad_id).is_some(),
            "text.pad_id {} is not in the vocabulary of tokenizer {shown}",
            spec.pad_id
        );
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot set truncation on tokenizer {shown}"))?;
        tokenizer.with_padding(None);
        Ok(Self { tokenizer })
    }

    /// Token ids of one note, special tokens included, at most `max_tokens` long.
    pub fn encode(&self, note: &str) -> Result<Vec<i64>, Error> {
        let encoding = self
            .tokenizer
            .encode_fast(note, true)
            .map_err(|e| Error::BadRequest(format!("note could not be tokenized: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }
}

/// The text graph's two inputs for one batch, padded to a common length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids, row-major `[batch, tokens]`.
    pub ids: Vec<i64>,
    /// 1 for a real token, 0 for padding, same layout as `ids`.
    pub mask: Vec<i64>,
    /// Length of every row: the longest note in the batch.
    pub tokens: usize,
}

/// Pads a batch to its longest note rather than to `max_tokens`, so short notes cost less.
pub fn pad_batch(notes: &[&[i64]], pad_id: u32) -> TokenBatch {
    let mut batch = TokenBatch {
        ids: Vec::new(),
        mask: Vec::new(),
        tokens: 0,
    };
    batch.tokens = pad_batch_into(notes, pad_id, &mut batch.ids, &mut batch.mask);
    batch
}

/// [`pad_batch`] into buffers kept from the previous batch (cleared first, so their memory is
/// reused); returns the padded length.
pub fn pad_batch_into(
    notes: &[&[i64]],
    pad_id: u32,
    ids: &mut Vec<i64>,
    mask: &mut Vec<i64>,
) -> usize {
    let tokens = notes.iter().map(|n| n.len()).max().unwrap_or(0);
    ids.clear();
    mask.clear();
    for note in notes {
        let padding = tokens - note.len();
        ids.extend_from_slice(note);
        ids.extend(std::iter::repeat_n(i64::from(pad_id), padding));
        mask.extend(std::iter::repeat_n(1, note.len()));
        mask.extend(std::iter::repeat_n(0, padding));
    }
    tokens
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::model::manifest::Manifest;

    const CLS: i64 = 2;
    const SEP: i64 = 3;
    const UNK: i64 = 1;
    const VIA: i64 = 4;
    const VOID: i64 = 5;
    const HOLE: i64 = 6;

    fn text_spec(max_tokens: usize) -> TextSpec {
        TextSpec {
            tokenizer: "tokenizer.json".into(),
            max_tokens,
            pad_id: 0,
        }
    }

    /// A small BERT-style tokenizer file whose own truncation and padding must be ignored.
    fn tokenizer_file() -> tempfile::NamedTempFile {
        let special = |id: u32, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        };
        let template =
            |name: &str, type_id: u32| json!({"SpecialToken": {"id": name, "type_id": type_id}});
        let file = json!({
            "version": "1.0",
            "truncation": {"direction": "Left", "max_length": 3, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": 32}, "direction": "Right", "pad_to_multiple_of": null,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
            "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [template("[CLS]", 0), {"Sequence": {"id": "A", "type_id": 0}}, template("[SEP]", 0)],
                "pair": [template("[CLS]", 0), {"Sequence": {"id": "A", "type_id": 0}}, template("[SEP]", 0),
                         {"Sequence": {"id": "B", "type_id": 1}}, template("[SEP]", 1)],
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
                }
            },
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100,
                      "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "via": 4, "void": 5, "穴": 6}}
        });
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), file.to_string()).unwrap();
        tmp
    }

    fn small(max_tokens: usize) -> NoteTokenizer {
        NoteTokenizer::load(tokenizer_file().path(), &text_spec(max_tokens)).unwrap()
    }

    #[test]
    fn encodes_with_special_tokens_and_lowercasing() {
        assert_eq!(small(16).encode("Via VOID").unwrap(), [CLS, VIA, VOID, SEP]);
    }

    #[test]
    fn empty_note_is_just_the_special_tokens() {
        assert_eq!(small(16).encode("").unwrap(), [CLS, SEP]);
        assert_eq!(small(16).encode(" \t\n").unwrap(), [CLS, SEP]);
    }

    #[test]
    fn truncation_keeps_cls_and_sep() {
        let tokenizer = small(5);
        let ids = tokenizer.encode("via void via void via void via").unwrap();
        assert_eq!(ids, [CLS, VIA, VOID, VIA, SEP]);
        let ids = tokenizer.encode("via void via").unwrap();
        assert_eq!(ids, [CLS, VIA, VOID, VIA, SEP]);
    }

    /// Expected ids were cross-checked with the Python `tokenizers` on the same file.
    #[test]
    fn unicode_notes_tokenize() {
        let tokenizer = small(16);
        // Kanji are split into single characters; kana runs stay one (unknown) word.
        assert_eq!(tokenizer.encode("穴あり").unwrap(), [CLS, HOLE, UNK, SEP]);
        assert_eq!(tokenizer.encode("void 5µm").unwrap(), [CLS, VOID, UNK, SEP]);
        assert_eq!(
            tokenizer.encode("VOID穴VIA").unwrap(),
            [CLS, VOID, HOLE, VIA, SEP]
        );
        let unknown = tokenizer.encode("ボイド Ø ≈ 70 µm ✓").unwrap();
        assert_eq!(unknown, [CLS, UNK, UNK, UNK, UNK, UNK, UNK, SEP]);
    }

    /// Pseudo-random strings from awkward Unicode ranges: controls, combining marks, RTL,
    /// CJK, emoji, private use, noncharacters. None may panic or break the length bound.
    #[test]
    fn arbitrary_utf8_never_panics() {
        let ranges: [(u32, u32); 10] = [
            (0x0, 0x7F),
            (0x80, 0x24F),
            (0x300, 0x36F),
            (0x590, 0x6FF),
            (0x3000, 0x30FF),
            (0x4E00, 0x9FFF),
            (0xE000, 0xF8FF),
            (0xFFF0, 0xFFFF),
            (0x1F300, 0x1FAFF),
            (0x10FFF0, 0x10FFFF),
        ];
        let demo = demo_tokenizer().0;
        let tokenizers = [small(8), demo];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as u32
        };
        for round in 0..400 {
            let len = if round % 50 == 0 {
                5000
            } else {
                next() as usize % 40
            };
            let note: String = (0..len)
                .filter_map(|_| {
                    let (lo, hi) = ranges[next() as usize % ranges.len()];
                    char::from_u32(lo + next() % (hi - lo + 1))
                })
                .collect();
            for tokenizer in &tokenizers {
                let max = tokenizer.tokenizer.get_truncation().unwrap().max_length;
                let ids = tokenizer.encode(&note).unwrap();
                assert!(ids.len() >= 2 && ids.len() <= max, "{note:?}");
                // Each tokenizer's own [CLS]/[SEP] ids (the demo's MiniLM vocabulary has 101/102).
                let special = |t: &str| i64::from(tokenizer.tokenizer.token_to_id(t).unwrap());
                let ends = (special("[CLS]"), special("[SEP]"));
                assert_eq!((ids[0], ids[ids.len() - 1]), ends, "{note:?}");
            }
        }
    }

    #[test]
    fn load_rejects_what_it_cannot_honour() {
        let file = tokenizer_file();
        let error = NoteTokenizer::load(file.path(), &text_spec(2)).unwrap_err();
        assert!(format!("{error:#}").contains("max_tokens"), "{error:#}");
        let spec = TextSpec {
            pad_id: 999,
            ..text_spec(8)
        };
        let error = NoteTokenizer::load(file.path(), &spec).unwrap_err();
        assert!(format!("{error:#}").contains("pad_id"), "{error:#}");
        let missing = Path::new("/nonexistent/kensa/tokenizer.json");
        let error = NoteTokenizer::load(missing, &text_spec(8)).unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent/kensa/tokenizer.json"),
            "{error:#}"
        );
    }

    #[test]
    fn pad_batch_pads_to_the_longest_note() {
        let batch = pad_batch(&[&[2, 4, 5, 3], &[2, 3], &[2, 4, 3]], 0);
        assert_eq!(batch.tokens, 4);
        assert_eq!(batch.ids, [2, 4, 5, 3, 2, 3, 0, 0, 2, 4, 3, 0]);
        assert_eq!(batch.mask, [1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0]);
    }

    #[test]
    fn pad_batch_uses_the_given_pad_id() {
        let batch = pad_batch(&[&[2, 3], &[2, 7, 7, 3]], 9);
        assert_eq!(batch.ids, [2, 3, 9, 9, 2, 7, 7, 3]);
        assert_eq!(batch.mask, [1, 1, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn pad_batch_of_nothing_is_empty() {
        let batch = pad_batch(&[], 0);
        assert_eq!((batch.ids.len(), batch.mask.len(), batch.tokens), (0, 0, 0));
    }

    #[derive(Deserialize)]
    struct TokenFixtures {
        max_tokens: usize,
        cases: Vec<TokenCase>,
    }

    #[derive(Deserialize)]
    struct TokenCase {
        note: String,
        ids: Vec<i64>,
        attention_mask: Vec<i64>,
    }

    fn demo_model() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
    }

    fn demo_tokenizer() -> (NoteTokenizer, TextSpec) {
        let manifest = Manifest::load(&demo_model()).unwrap();
        let path = demo_model().join(&manifest.text.tokenizer);
        (
            NoteTokenizer::load(&path, &manifest.text).unwrap(),
            manifest.text,
        )
    }

    #[test]
    fn matches_the_python_pipeline_on_its_fixtures() {
        let (tokenizer, spec) = demo_tokenizer();
        let text = std::fs::read_to_string(demo_model().join("fixtures/tokens.json")).unwrap();
        let fixtures: TokenFixtures = serde_json::from_str(&text).unwrap();
        assert_eq!(fixtures.max_tokens, spec.max_tokens);
        assert!(!fixtures.cases.is_empty());
        let mut encoded = Vec::new();
        for case in &fixtures.cases {
            let ids = tokenizer.encode(&case.note).unwrap();
            assert_eq!(ids, case.ids, "{:?}", case.note);
            assert_eq!(case.attention_mask, vec![1; ids.len()], "{:?}", case.note);
            encoded.push(ids);
        }
        assert!(
            encoded.iter().any(|ids| ids.len() == spec.max_tokens),
            "no case truncates"
        );

        let rows: Vec<&[i64]> = encoded.iter().map(Vec::as_slice).collect();
        let batch = pad_batch(&rows, spec.pad_id);
        let longest = fixtures.cases.iter().map(|c| c.ids.len()).max().unwrap();
        assert_eq!(batch.tokens, longest);
        for (row, case) in fixtures.cases.iter().enumerate() {
            let padding = longest - case.ids.len();
            let mut ids = case.ids.clone();
            ids.extend(vec![i64::from(spec.pad_id); padding]);
            let mut mask = case.attention_mask.clone();
            mask.extend(vec![0; padding]);
            assert_eq!(batch.ids[row * longest..(row + 1) * longest], ids[..]);
            assert_eq!(batch.mask[row * longest..(row + 1) * longest], mask[..]);
        }
    }
}
