//! Hostile plugins: registry (filled in below).
