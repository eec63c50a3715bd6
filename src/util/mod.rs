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

/// How many cases each property test runs: 256 in the normal test run,
/// `REDKIT_FUZZ_CASES` for a longer run (`scripts/fuzz.sh`).
#[cfg(test)]
pub(crate) fn property_cases() -> u32 {
    std::env::var("REDKIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs_are_escaped() {
        assert_eq!(super::glob_escape("a{b}*?[x]\\"), "a{b}\\*\\?\\[x\\]\\\\");
    }
}
