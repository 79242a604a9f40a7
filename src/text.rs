//! What text a request may carry into the store, checked once in each service so every
//! backend behaves the same: PostgreSQL cannot store NUL at all (an insert with one fails, and
//! a station retrying would get 503 forever), and no field needs control characters other than
//! the tab and line breaks a note may hold.

use crate::error::Error;

/// Refuses NUL and control characters other than tab, line feed and carriage return.
pub fn check_text(field: &str, value: &str) -> Result<(), Error> {
    match value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(Error::BadRequest(format!(
            "{field} contains the control character U+{:04X}; send text without it",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_escape_are_refused_tabs_and_newlines_kept() {
        assert!(check_text("note", "dia 53.6µm\tdepth\r\n").is_ok());
        let error = check_text("note", "a\0b").unwrap_err();
        assert!(error.to_string().contains("U+0000"), "{error}");
        assert!(check_text("line", "\u{1b}[31m").is_err());
    }
}
