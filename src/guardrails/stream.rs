//! Output guardrails on a stream: the answer arrives in pieces, and a match may straddle
//! two of them. The redactor holds back the last [`StageRules::holdback_chars`] characters
//! of each choice's text, scans what it holds on every piece, and lets out only text that
//! no later piece can turn into a match; at the end of the choice it lets out the rest.

use std::collections::BTreeSet;

use super::{Action, StageRules};

#[derive(Default)]
pub struct StreamRedactor {
    pending: String,
    /// Rules that fired so far (each counted once per stream).
    fired: BTreeSet<(String, Action)>,
}

/// What one piece let out.
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    /// Text to send on now (redacted).
    pub text: String,
    /// A block rule fired: send nothing more.
    pub blocked_by: Option<String>,
}

impl StreamRedactor {
    /// Adds a piece of the answer; returns what may be sent now.
    pub fn push(&mut self, rules: &StageRules, piece: &str) -> Released {
        self.pending.push_str(piece);
        self.release(rules, false)
    }

    /// The choice ended: everything held back goes out (redacted).
    pub fn finish(&mut self, rules: &StageRules) -> Released {
        self.release(rules, true)
    }

    pub fn fired(&self) -> Vec<(String, Action)> {
        self.fired.iter().cloned().collect()
    }

    fn release(&mut self, rules: &StageRules, all: bool) -> Released {
        let applied = rules.apply(&self.pending);
        for f in &applied.fired {
            // A max_chars rule only judges the whole answer (at the end).
            self.fired.insert(f.clone());
        }
        if let Some(rule) = applied.blocked_by {
            self.pending.clear();
            return Released {
                text: String::new(),
                blocked_by: Some(rule),
            };
        }
        let holdback = if all { 0 } else { rules.holdback_chars() };
        let total = self.pending.chars().count();
        if total <= holdback {
            return Released::default();
        }
        // Cut at a char boundary `holdback` characters from the end…
        let mut cut = self
            .pending
            .char_indices()
            .nth(total - holdback)
            .map_or(self.pending.len(), |(i, _)| i);
        // …but never inside a redacted match: the whole match waits.
        let text = match &applied.redacted {
            None => {
                let out = self.pending[..cut].to_owned();
                self.pending.drain(..cut);
                out
            }
            Some(_) => {
                for span in rules.redaction_spans(&self.pending) {
                    if span.0 < cut && span.1 > cut {
                        cut = span.0;
                    }
                }
                let head: String = self.pending[..cut].to_owned();
                self.pending.drain(..cut);
                rules.apply(&head).redacted.unwrap_or(head)
            }
        };
        Released {
            text,
            blocked_by: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Rule, StageRules};
    use super::*;
    use crate::guardrails::detect::Detector;

    fn rules(action: Action) -> StageRules {
        StageRules::new(vec![Rule {
            name: "mask-emails".into(),
            detector: Detector::Email,
            action,
        }])
        .unwrap()
    }

    #[test]
    fn a_match_split_across_pieces_is_still_redacted() {
        let rules = rules(Action::Redact);
        let mut r = StreamRedactor::default();
        let mut out = String::new();
        let filler = "x".repeat(300);
        for piece in [
            filler.as_str(),
            " write to jane.",
            "doe@exam",
            "ple.com today ",
            filler.as_str(),
        ] {
            out.push_str(&r.push(&rules, piece).text);
        }
        out.push_str(&r.finish(&rules).text);
        assert_eq!(
            out,
            format!("{filler} write to [redacted:email] today {filler}")
        );
        assert_eq!(r.fired(), [("mask-emails".to_owned(), Action::Redact)]);
    }

    #[test]
    fn a_block_stops_the_stream_before_the_match_is_sent() {
        let rules = rules(Action::Block);
        let mut r = StreamRedactor::default();
        assert_eq!(r.push(&rules, "contact: bob@").text, "");
        let released = r.push(&rules, "example.com");
        assert_eq!(released.blocked_by.as_deref(), Some("mask-emails"));
        assert_eq!(released.text, "");
    }

    #[test]
    fn a_match_the_holdback_would_cut_waits_whole() {
        let rules = rules(Action::Redact);
        let mut r = StreamRedactor::default();
        // 277 characters: the cut, 256 from the end, falls inside the address.
        let first = r.push(
            &rules,
            &format!("xxxxxxxxxx bob@example.com {}", "y".repeat(250)),
        );
        assert_eq!(first.text, "xxxxxxxxxx ");
        let rest = r.finish(&rules);
        assert_eq!(rest.text, format!("[redacted:email] {}", "y".repeat(250)));
    }

    #[test]
    fn a_complete_match_goes_out_redacted_without_waiting_for_the_end() {
        let rules = rules(Action::Redact);
        let mut r = StreamRedactor::default();
        let first = r.push(&rules, &format!("bob@example.com {}", "y".repeat(300)));
        // Everything but the last 256 characters is out already, the address masked.
        assert_eq!(first.text, format!("[redacted:email] {}", "y".repeat(44)));
    }
}
