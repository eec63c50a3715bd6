//! The one reader of packed RESP requests (`*N\r\n$len\r\narg\r\n...`), as the `redis` crate
//! packs commands: command names for metrics and retry decisions, arguments for routing and
//! key prefixes, pipelines split into commands. Pure functions, no allocation but the
//! argument lists.

/// One `<marker><number>\r\n` header: the number and the bytes after the line (at most 19
/// digits, so that it never overflows).
fn header(b: &[u8], marker: u8) -> Option<(usize, &[u8])> {
    let b = b.strip_prefix(&[marker])?;
    let mut n: u64 = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' if i < 19 => n = n * 10 + u64::from(c - b'0'),
            b'\r' if i > 0 => {
                let rest = b.get(i + 1..)?.strip_prefix(b"\n")?;
                return Some((usize::try_from(n).ok()?, rest));
            }
            _ => return None,
        }
    }
    None
}

/// The arguments of the first packed command in `packed` and the bytes after it.
pub(crate) fn split_command(packed: &[u8]) -> Option<(Vec<&[u8]>, &[u8])> {
    let (count, mut rest) = header(packed, b'*')?;
    // A count larger than the bytes that follow is corrupt: do not reserve for it.
    let mut args = Vec::with_capacity(count.min(rest.len() / 4 + 1));
    for _ in 0..count {
        let (len, after) = header(rest, b'$')?;
        args.push(after.get(..len)?);
        rest = after.get(len..)?.strip_prefix(b"\r\n")?;
    }
    Some((args, rest))
}

/// The name of the first packed command.
pub(crate) fn command_name(packed: &[u8]) -> Option<&[u8]> {
    let (count, rest) = header(packed, b'*')?;
    if count == 0 {
        return None;
    }
    let (len, after) = header(rest, b'$')?;
    after.get(..len)
}

/// One command of a pipeline: its packed bytes and its arguments.
pub(crate) type Packed<'a> = (&'a [u8], Vec<&'a [u8]>);

/// Every command of a packed pipeline; `None` when any part is not a packed command.
pub(crate) fn split_pipeline(mut packed: &[u8]) -> Option<Vec<Packed<'_>>> {
    let mut out = Vec::new();
    while !packed.is_empty() {
        let (args, rest) = split_command(packed)?;
        out.push((&packed[..packed.len() - rest.len()], args));
        packed = rest;
    }
    Some(out)
}

/// Calls `f` with the name and subcommand of every command of a packed pipeline; `false`
/// when the bytes are not a sequence of packed commands or `f` returned `false`.
pub(crate) fn each_command<'a>(
    mut packed: &'a [u8],
    mut f: impl FnMut(&'a [u8], Option<&'a [u8]>) -> bool,
) -> bool {
    // One walk over each command: its first two arguments kept, the rest skipped.
    while !packed.is_empty() {
        let Some((count, mut rest)) = header(packed, b'*') else {
            return false;
        };
        let mut words: [Option<&'a [u8]>; 2] = [None, None];
        for i in 0..count {
            let Some((len, after)) = header(rest, b'$') else {
                return false;
            };
            let (Some(arg), Some(next)) = (
                after.get(..len),
                after.get(len..).and_then(|a| a.strip_prefix(b"\r\n")),
            ) else {
                return false;
            };
            if let Some(w) = words.get_mut(i) {
                *w = Some(arg);
            }
            rest = next;
        }
        let [Some(name), sub] = words else {
            return false;
        };
        if !f(name, sub) {
            return false;
        }
        packed = rest;
    }
    true
}

/// The length of the largest argument in a packed command or pipeline, when it is over
/// `limit` (`None`: every argument fits). Cheap when the whole request fits.
pub(crate) fn oversized_argument(packed: &[u8], limit: u64) -> Option<u64> {
    if packed.len() as u64 <= limit {
        return None;
    }
    let mut rest = packed;
    let mut largest = 0u64;
    while !rest.is_empty() {
        let (count, mut at) = header(rest, b'*')?;
        for _ in 0..count {
            let (len, after) = header(at, b'$')?;
            largest = largest.max(len as u64);
            at = after.get(len..)?.strip_prefix(b"\r\n")?;
        }
        rest = at;
    }
    (largest > limit).then_some(largest)
}

/// Packs arguments as one command, the way the `redis` crate does.
#[allow(dead_code)] // used in tests
pub(crate) fn pack(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    pack_into(&mut out, args);
    out
}

/// Appends one packed command to `out`.
pub(crate) fn pack_into(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first command's name and subcommand, as `each_command` sees them.
    fn command_words(packed: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
        let mut first = None;
        each_command(packed, |name, sub| {
            first = Some((name, sub));
            false
        });
        first
    }

    #[test]
    fn reads_names_and_arguments() {
        let get = redis::cmd("GET").arg("k").get_packed_command();
        assert_eq!(command_name(&get), Some(&b"GET"[..]));
        assert_eq!(command_words(&get), Some((&b"GET"[..], Some(&b"k"[..]))));
        let (args, rest) = split_command(&get).expect("parses");
        assert_eq!(args, vec![&b"GET"[..], &b"k"[..]]);
        assert!(rest.is_empty());
        assert_eq!(pack(&args), get);
        let ping = redis::cmd("PING").get_packed_command();
        assert_eq!(command_words(&ping), Some((&b"PING"[..], None)));
    }

    #[test]
    fn splits_pipelines() {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("a").cmd("MGET").arg("b").arg("c");
        let packed = pipe.get_packed_pipeline();
        let cmds = split_pipeline(&packed).expect("parses");
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[1].1.len(), 3);
        let mut names = Vec::new();
        assert!(each_command(&packed, |n, _| {
            names.push(n.to_vec());
            true
        }));
        assert_eq!(names, vec![b"GET".to_vec(), b"MGET".to_vec()]);
    }

    #[test]
    fn finds_oversized_arguments() {
        let cmd = redis::cmd("SET")
            .arg("k")
            .arg(vec![b'x'; 2000])
            .get_packed_command();
        assert_eq!(oversized_argument(&cmd, 1024), Some(2000));
        assert_eq!(oversized_argument(&cmd, 4096), None);
        let small = redis::cmd("SET").arg("k").arg("v").get_packed_command();
        assert_eq!(oversized_argument(&small, 4), None);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(command_name(b"garbage"), None);
        assert!(split_pipeline(b"*1\r\n$3\r\nGE").is_none());
        assert!(!each_command(b"*1\r\n$3\r\nGE", |_, _| true));
        assert!(split_command(b"*99999999999999999999\r\n").is_none());
        assert!(split_command(b"*-1\r\n").is_none());
        assert!(split_command(b"*2\r\n$1\r\na\r\n").is_none());
        assert_eq!(command_name(b"*0\r\n"), None);
    }

    mod properties {
        use super::super::*;
        use super::command_words;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::util::property_cases()))]

            #[test]
            fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = split_command(&bytes);
                let _ = split_pipeline(&bytes);
                let _ = command_words(&bytes);
                let _ = command_name(&bytes);
                let _ = each_command(&bytes, |_, _| true);
                let _ = oversized_argument(&bytes, 4);
            }

            #[test]
            fn packed_commands_read_back(
                cmds in proptest::collection::vec(
                    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
                    1..5,
                ),
            ) {
                let mut packed = Vec::new();
                for args in &cmds {
                    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    pack_into(&mut packed, &refs);
                }
                let got = split_pipeline(&packed).expect("parses");
                prop_assert_eq!(got.len(), cmds.len());
                for ((_, args), want) in got.iter().zip(&cmds) {
                    let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                    prop_assert_eq!(&args, want);
                }
                prop_assert_eq!(command_name(&packed), Some(cmds[0][0].as_slice()));
                // A truncated request never parses as a whole one.
                if packed.len() > 1 {
                    prop_assert!(split_pipeline(&packed[..packed.len() - 1]).is_none());
                }
            }
        }
    }
}
