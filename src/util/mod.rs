//! Small pieces every layer uses: random ids, the packed-RESP reader, latency histograms
//! and thread joining.

pub(crate) mod histogram;
pub(crate) mod ids;
pub(crate) mod resp;
pub(crate) mod threads;
pub(crate) mod time;
