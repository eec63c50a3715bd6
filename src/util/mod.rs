//! Small pieces every layer uses: random ids, the packed-RESP reader, latency histograms
//! and thread joining.

pub(crate) mod histogram;
pub(crate) mod ids;
pub(crate) mod resp;
pub(crate) mod threads;
pub(crate) mod time;

/// Escapes the glob characters of a literal key prefix for `SCAN MATCH`.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs_are_escaped() {
        assert_eq!(super::glob_escape("a{b}*?[x]\\"), "a{b}\\*\\?\\[x\\]\\\\");
    }
}
