//! The operator's commands beside `run`: the terminal view (`top`), the
//! connection check (`check-config --connect`, `probe`) and sending dead
//! letters again (`redrive`).

pub mod probe;
pub mod redrive;
pub mod top;
