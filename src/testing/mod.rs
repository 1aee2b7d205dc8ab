//! Tools for tests, benchmarks and `corral demo`, not part of the proxy: an
//! in-process origin that counts its requests and can be slow, fail, hang or
//! reset ([`mock_origin`]), the flash-sale demonstration ([`demo`]) and its
//! fleet variant, N instances sharing one Redis ([`fleet_demo`]).
//!
//! They sit outside the proxy's module tree (the architecture test gives them
//! the crate root's layer): nothing in the request path imports them.

pub mod demo;
pub mod fleet_demo;
pub mod mock_origin;
