# gpuacct login greeting: your GPU balance, and a warning when it is low or enforced.
# Install: gpuacct-balance --print-hook > /etc/profile.d/gpuacct.sh
# A courtesy only: enforcement does not depend on it. Never delays a login by more than 3 s.
case $- in
    *i*) ;;
    *) return 0 2>/dev/null || exit 0 ;;
esac
if command -v "${GPUACCT_BALANCE:-gpuacct-balance}" >/dev/null 2>&1; then
    timeout 3 "${GPUACCT_BALANCE:-gpuacct-balance}" --greeting 2>/dev/null || true
fi
