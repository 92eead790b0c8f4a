"""No pickle anywhere: nothing the daemon reads (wire messages, checkpoints, the log,
data files) can run code when it is loaded."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("src", "engine", "daemon", "clients", "benchmarks")
FORBIDDEN = [
    (re.compile(r"^\s*(import|from)\s+(c?[Pp]ickle|dill|cloudpickle|joblib|shelve|marshal)\b", re.M),
     "a pickle-family import"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load/np.save with allow_pickle=True"),
    (re.compile(r"^(?!.*allow_pickle\s*=\s*False).*\bnp\.load\(", re.M), "np.load without allow_pickle=False"),
    (re.compile(r"\bdtype\s*=\s*object\b|astype\(\s*object\s*\)"), "object arrays (np.save pickles them)"),
    (re.compile(r"\bpickle\.|__reduce(_ex)?__"), "pickle calls or hooks"),
]


def _sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_package_source_uses_pickle():
    found = []
    for path in _sources():
        text = path.read_text()
        for pattern, what in FORBIDDEN:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert found == []


def test_the_check_sees_what_it_forbids():
    samples = ["import pickle", "from cPickle import loads", "np.load(f, allow_pickle=True)",
               "x = np.load(path)", "a = np.array(v, dtype=object)", "y = pickle.loads(b)"]
    for sample in samples:
        assert any(p.search(sample) for p, _ in FORBIDDEN), sample
    assert not any(p.search("np.load(path, allow_pickle=False)") for p, _ in FORBIDDEN)
    assert sum(1 for _ in _sources()) > 50
