//! Untrusted text made safe to show. Connectors are third-party code and profile files are
//! other people's data: what they say (reasons, messages, `describe()` fields, file names,
//! emails) is data, never terminal control. Wherever the host prints, logs, stores or writes
//! such text it goes through [`clean`], and every CSV cell through [`csv_cell`].

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest connector message kept (an error, a contact's reason).
pub const MAX_MESSAGE_CHARS: usize = 1_000;
/// The longest short label kept (a vendor code, a display name, a version).
pub const MAX_LABEL_CHARS: usize = 120;

/// `text` with every control character, escape sequence introducer and invisible formatting
/// character written out as a visible escape (`\x1b`, `\r`, `\n`, `\u{202e}`), cut to
/// `max_chars` with a marker saying how much was left out. A cleaned text prints on one line
/// and cannot move the cursor, recolour the terminal, forge lines or reorder what follows.
pub fn clean(text: &str, max_chars: usize) -> String {
    let needs_work = text.chars().any(is_unsafe) || text.len() > max_chars;
    if !needs_work {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(2)));
    let mut chars = text.chars();
    for (kept, c) in chars.by_ref().enumerate() {
        if kept == max_chars {
            let rest = 1 + chars.count();
            let _ = write!(out, "… [cut: {rest} more characters]");
            return out;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that must never reach a terminal or a log as themselves: C0 and C1 controls
/// (ESC, CSI, CR, LF, BEL...), DEL, and the invisible characters that reorder or hide text
/// (bidirectional overrides and isolates, zero-width characters, line separators).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}'     // zero-width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}'   // line and paragraph separators
            | '\u{202a}'..='\u{202e}'   // bidirectional embeddings and overrides
            | '\u{2060}'..='\u{2064}'   // word joiner and invisible operators
            | '\u{2066}'..='\u{2069}'   // bidirectional isolates
            | '\u{feff}'                // zero-width no-break space
        )
}

/// A CSV cell that a spreadsheet will show as text: [`clean`]ed, and prefixed with `'` when
/// it would otherwise start a formula (`=`, `+`, `-`, `@`, their full-width forms, or a tab
/// or carriage return), as OWASP recommends against CSV injection.
pub fn csv_cell(text: &str) -> Cow<'_, str> {
    let starts_formula = text.starts_with(['=', '+', '-', '@', '\t', '\r', '＝', '＋', '－', '＠']);
    let safe = !starts_formula && !text.chars().any(is_unsafe);
    if safe {
        return Cow::Borrowed(text);
    }
    let cleaned = clean(text, usize::MAX);
    if starts_formula {
        Cow::Owned(format!("'{cleaned}"))
    } else {
        Cow::Owned(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_escape_sequences_are_written_out() {
        assert_eq!(clean("plain text", 100), "plain text");
        assert_eq!(
            clean("\x1b[2J\x1b[1;32mok\x1b[0m", 100),
            "\\x1b[2J\\x1b[1;32mok\\x1b[0m"
        );
        assert_eq!(
            clean("bad\r  succeeded\nExport to x: succeeded", 100),
            "bad\\r  succeeded\\nExport to x: succeeded"
        );
        // C1 controls (8-bit CSI), DEL, BEL and backspace.
        assert_eq!(
            clean("a\u{9b}31mb\u{7f}\u{7}\u{8}", 100),
            "a\\x9b31mb\\x7f\\x07\\x08"
        );
        // Right-to-left override and zero-width characters that hide or reorder text.
        assert_eq!(
            clean("evil\u{202e}txt.exe\u{200b}", 100),
            "evil\\u{202e}txt.exe\\u{200b}"
        );
        assert_eq!(clean("tab\there", 100), "tab\\there");
        // Ordinary non-ASCII text is kept.
        assert_eq!(clean("Zoë Ångström — 東京", 100), "Zoë Ångström — 東京");
    }

    #[test]
    fn long_texts_are_cut_with_a_marker() {
        let long = "x".repeat(4_000_000);
        let cut = clean(&long, 10);
        assert_eq!(cut, "xxxxxxxxxx… [cut: 3999990 more characters]");
        assert_eq!(clean("exactly10!", 10), "exactly10!");
        // Cutting never splits a character.
        assert_eq!(clean("ééé", 2), "éé… [cut: 1 more characters]");
    }

    #[test]
    fn csv_cells_never_start_a_formula() {
        for formula in [
            "=HYPERLINK(\"http://evil\",\"x\")",
            "+1+2",
            "-2+3",
            "@SUM(A1)",
            "\t=1",
            "＝1+1",
        ] {
            let cell = csv_cell(formula);
            assert!(cell.starts_with('\''), "{formula:?} became {cell:?}");
        }
        assert_eq!(csv_cell("ada@example.com"), "ada@example.com");
        assert_eq!(csv_cell("Invalid Email Address"), "Invalid Email Address");
        assert_eq!(csv_cell("a\r\nb"), "a\\r\\nb");
    }
}
