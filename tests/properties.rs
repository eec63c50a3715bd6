//! Property tests of the public parsers (bounded case counts, part of the normal test run):
//! `INFO` text, URLs, durations in URLs. The crate-private parsers (packed RESP, key
//! positions, keyspace flags) are property-tested in their own modules.

use proptest::prelude::*;
use redkit::monitor::Info;
use redkit::Config;

/// 256 cases in the normal test run, `REDKIT_FUZZ_CASES` for a longer one.
fn cases() -> u32 {
    std::env::var("REDKIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_info_text_parses_without_panic(text in "\\PC{0,400}") {
        let _ = Info::parse(&text);
    }

    #[test]
    fn info_fields_read_back(
        fields in proptest::collection::btree_map("[a-z_]{1,12}", "[a-zA-Z0-9.,=_-]{0,16}", 0..20),
        keys in 0u64..1_000_000,
        version in "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}",
    ) {
        let mut text = format!("# Server\r\nredis_version:{version}\r\n# Other\r\n");
        for (k, v) in &fields {
            text.push_str(&format!("{k}:{v}\r\n"));
        }
        text.push_str(&format!("# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n"));
        let info = Info::parse(&text);
        prop_assert_eq!(info.server.redis_version.as_deref(), Some(version.as_str()));
        for (k, v) in &fields {
            prop_assert_eq!(info.get("other", k), Some(v.as_str()));
        }
        prop_assert_eq!(info.keyspace.first().map(|d| d.keys), Some(keys));
    }

    #[test]
    fn url_parameters_at_any_value_never_panic(
        param in prop_oneof![
            Just("connect_timeout"), Just("response_timeout"), Just("write_timeout"),
            Just("checkout_timeout"), Just("pool_max_size"), Just("pool_min_idle"),
            Just("heartbeat_interval"), Just("heartbeat_timeout"), Just("max_reply_size"),
            Just("max_value_size"), Just("multiplexed"), Just("protocol"), Just("client_name"),
        ],
        value in prop_oneof![
            "[0-9]{1,25}", "[0-9]{1,20}(ms|s|m|us)", "\\PC{0,12}",
            Just("18446744073709551615s".to_owned()), Just("4294967295".to_owned()),
        ],
    ) {
        let url = format!("redis://127.0.0.1/?{param}={value}");
        match Config::from_url(&url) {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.class(), redkit::ErrorClass::Config, "{}", e),
        }
    }
}
