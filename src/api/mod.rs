//! Front doors: thin adapters from a wire format to the [`Inspector`](crate::inspector::Inspector).

pub mod http;
