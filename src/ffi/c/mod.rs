//! The C ABI (see `include/murmur.h`).
