# Shared by the scripts that run on every supported CPython: which versions those are, and
# where each interpreter is.
# Usage: source scripts/pythons.sh; then "$(python_for 3.12)" or ${SUPPORTED_PYTHONS[@]}.

# The CPython versions oxloop supports, oldest first (pyproject.toml's classifiers agree).
SUPPORTED_PYTHONS=(3.11 3.12 3.13)

# Prints the path of a CPython VERSION interpreter (e.g. 3.12): `pythonVERSION` on PATH, else
# the newest pyenv build of that version; a candidate counts only if it runs and is that
# version (a pyenv shim for a version not selected does not run). Fails, printing nothing,
# if there is none.
python_for() {
    local version="$1" candidate
    for candidate in "$(command -v "python$version")" \
        $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/"python$version" 2>/dev/null | sort -V -r); do
        if [ -n "$candidate" ] && [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$version" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
