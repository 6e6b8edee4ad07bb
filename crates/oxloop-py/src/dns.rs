//! Address-literal fast path for getaddrinfo (being written).
use pyo3::prelude::*;

/// Adds the DNS functions to the extension module.
pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
