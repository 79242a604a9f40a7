//! The recogniser's alphabet and CTC greedy decoding (PP-OCR's `CTCLabelDecode`).

/// Class index 0 is CTC's blank; the model's characters follow, then a space.
#[derive(Debug, Clone)]
pub struct Alphabet {
    classes: Vec<String>,
}

/// One decoded line: its text and the mean probability of the characters kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The characters, repeats and blanks removed.
    pub text: String,
    /// Mean of the kept steps' probabilities; 0 when nothing was kept.
    pub confidence: f32,
}

impl Alphabet {
    /// The alphabet from the `character` entry of the recogniser's ONNX metadata: one
    /// character a line, split as Python's `str.splitlines` splits (the reference does).
    pub fn from_metadata(character: &str) -> Alphabet {
        let mut classes = vec![String::new()];
        classes.extend(split_lines(character).map(str::to_owned));
        classes.push(" ".to_owned());
        Alphabet { classes }
    }

    /// Number of classes the recogniser must score (blank and space included).
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Never true: the blank is always there.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Greedy decoding of one line's scores (`steps x classes`, row-major): the best class
    /// per step, repeats merged, blanks dropped.
    pub fn decode(&self, scores: &[f32], classes: usize) -> Decoded {
        let mut text = String::new();
        let (mut sum, mut kept) = (0.0f64, 0usize);
        let mut previous = usize::MAX;
        for step in scores.chunks_exact(classes.max(1)) {
            let (best, probability) = step.iter().enumerate().fold(
                (0, f32::MIN),
                |(bi, bp), (i, &p)| if p > bp { (i, p) } else { (bi, bp) },
            );
            if best != previous && best != 0 {
                if let Some(character) = self.classes.get(best) {
                    text.push_str(character);
                }
                sum += f64::from(probability);
                kept += 1;
            }
            previous = best;
        }
        let confidence = if kept == 0 {
            0.0
        } else {
            (sum / kept as f64) as f32
        };
        Decoded { text, confidence }
    }
}

/// Lines as Python's `str.splitlines` cuts them (every Unicode line boundary, `\r\n` as one).
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let boundary = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.find(boundary) {
            Some(at) => {
                let line = &rest[..at];
                let skip = if rest[at..].starts_with("\r\n") {
                    2
                } else {
                    rest[at..].chars().next().map_or(1, char::len_utf8)
                };
                rest = &rest[at + skip..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = "";
                Some(line)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_has_blank_first_and_space_last() {
        let alphabet = Alphabet::from_metadata("a\nb\r\nc");
        assert_eq!(alphabet.classes, ["", "a", "b", "c", " "]);
        assert_eq!(alphabet.len(), 5);
    }

    #[test]
    fn repeats_merge_and_blanks_separate() {
        let alphabet = Alphabet::from_metadata("a\nb");
        // steps: a a blank a b space
        let steps = [
            [0.1, 0.8, 0.1, 0.0],
            [0.1, 0.6, 0.3, 0.0],
            [0.9, 0.1, 0.0, 0.0],
            [0.2, 0.7, 0.1, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.5],
        ];
        let flat: Vec<f32> = steps.iter().flatten().copied().collect();
        let decoded = alphabet.decode(&flat, 4);
        assert_eq!(decoded.text, "aab ");
        assert!((decoded.confidence - (0.8 + 0.7 + 1.0 + 0.5) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn all_blank_is_an_empty_line_with_no_confidence() {
        let alphabet = Alphabet::from_metadata("a");
        let decoded = alphabet.decode(&[1.0, 0.0, 0.0, 0.9, 0.1, 0.0], 3);
        assert_eq!(
            decoded,
            Decoded {
                text: String::new(),
                confidence: 0.0
            }
        );
    }
}
