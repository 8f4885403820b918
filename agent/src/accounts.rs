//! The system's user database (getpwnam_r / getpwuid_r): account names and
//! uids for sessions, captures and file alerts.

/// The account name of a uid, or the uid itself when it has none.
pub fn account_of(uid: u32) -> String {
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes only into `passwd` and `buffer`, whose
    // sizes we pass, and sets `result` to &passwd or null.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut passwd,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() && !passwd.pw_name.is_null() {
        // SAFETY: pw_name points into `buffer`, NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr(passwd.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    uid.to_string()
}

/// The uid of an account, None when the system does not know it.
pub fn uid_of(account: &str) -> Option<u32> {
    let name = std::ffi::CString::new(account).ok()?;
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes only into `passwd` and `buffer`, whose
    // sizes we pass, and sets `result` to &passwd or null.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut passwd,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(passwd.pw_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_both_ways() {
        assert_eq!(account_of(0), "root");
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(uid_of("no-such-account-here"), None);
        assert_eq!(account_of(4_000_000_000), "4000000000");
    }
}
