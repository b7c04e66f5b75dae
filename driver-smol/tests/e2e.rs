//! The shared end-to-end suite on smol, and the same smol driver inside
//! async-std's executor.
#![allow(missing_docs)]

mod on_smol {
    natrix_driver_core::e2e_suite!(smol::block_on, natrix_smol::Smol);
}

mod inside_async_std {
    natrix_driver_core::e2e_suite!(async_std::task::block_on, natrix_smol::Smol);
}
