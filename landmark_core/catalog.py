"""The landmark catalog: what the model can name, and where each landmark is.

A catalog is an ordered list of landmarks; a landmark's ``id`` is its class index in the model's head.
The default catalog is the 50-class Udacity "Landmark Classification & Tagging" subset of Google Landmarks v2,
in the dataset's folder order. Any class-folder dataset can make its own catalog (names from folder names,
coordinates from an optional CSV/JSON), and the catalog travels inside every model artifact.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .storage import is_s3


@dataclass(frozen=True)
class Landmark:
    id: int
    folder: str  # class folder name, e.g. "09.Golden_Gate_Bridge"
    name: str  # display name, e.g. "Golden Gate Bridge"
    lat: float | None = None
    lon: float | None = None
    country: str | None = None  # ISO 3166-1 alpha-2

    def to_dict(self) -> dict:
        return asdict(self)


class CatalogError(ValueError):
    pass


def display_name(folder: str) -> str:
    """'09.Golden_Gate_Bridge' -> 'Golden Gate Bridge'; 'halong_bay' -> 'Halong Bay'."""
    stem = re.sub(r"^\d+[._-]", "", folder)
    words = stem.replace("_", " ").replace("-", " ").split()
    if stem.islower():
        words = [w.capitalize() for w in words]
    return " ".join(words)


class Catalog:
    """An ordered, immutable list of landmarks with lookups by id, name and folder."""

    def __init__(self, landmarks: Sequence[Landmark], *, name: str = "custom"):
        if not landmarks:
            raise CatalogError("a catalog needs at least one landmark")
        for i, lm in enumerate(landmarks):
            if lm.id != i:
                raise CatalogError(f"landmark ids must be 0..n-1 in order; {lm.folder!r} has id {lm.id}, expected {i}")
            _check_coords(lm)
        folders = [lm.folder for lm in landmarks]
        if len(set(folders)) != len(folders):
            raise CatalogError("duplicate folder names in catalog")
        self.name = name
        self.landmarks: tuple[Landmark, ...] = tuple(landmarks)
        self._by_key = {}
        for lm in self.landmarks:
            self._by_key[lm.folder.lower()] = lm
            self._by_key.setdefault(lm.name.lower(), lm)

    def __len__(self) -> int:
        return len(self.landmarks)

    def __iter__(self):
        return iter(self.landmarks)

    def __getitem__(self, i: int) -> Landmark:
        return self.landmarks[i]

    def __eq__(self, other) -> bool:
        return isinstance(other, Catalog) and self.landmarks == other.landmarks

    @property
    def names(self) -> list[str]:
        return [lm.name for lm in self.landmarks]

    @property
    def folders(self) -> list[str]:
        return [lm.folder for lm in self.landmarks]

    @property
    def without_location(self) -> list[str]:
        """Folders of the landmarks whose tags can carry no latitude/longitude."""
        return [lm.folder for lm in self.landmarks if lm.lat is None or lm.lon is None]

    def find(self, key: str) -> Landmark:
        """Look a landmark up by folder name or display name (case-insensitive)."""
        lm = self._by_key.get(key.strip().lower())
        if lm is None:
            names = ", ".join(repr(n) for n in self.names[:20]) + (", ..." if len(self) > 20 else "")
            raise CatalogError(f"no landmark {key!r} in catalog {self.name!r} (its landmarks: {names})")
        return lm

    def to_json(self) -> dict:
        return {"name": self.name, "landmarks": [lm.to_dict() for lm in self.landmarks]}

    @classmethod
    def from_json(cls, data: Mapping) -> "Catalog":
        try:
            return cls([Landmark(**lm) for lm in data["landmarks"]], name=data.get("name", "custom"))
        except (KeyError, TypeError) as e:
            raise CatalogError(f"malformed catalog JSON: {e}") from e

    @classmethod
    def from_folders(
        cls, folders: Iterable[str], *, coords: Mapping[str, Mapping] | None = None, name: str = "custom"
    ) -> "Catalog":
        """A catalog from class-folder names (sorted, as torchvision's ImageFolder does).

        ``coords`` maps a folder name (or display name) to ``{"lat", "lon", "country", "name"}``, all optional.
        Folders with no entry there that name a landmark this project knows (``KNOWN_PLACES``: the Udacity 50
        by their folder names, the real benchmark sets) get its name and location: a model that knows where
        its landmarks are is the point of the product, and nobody should have to type the Eiffel Tower's.
        """
        coords = {k.lower(): v for k, v in (coords or {}).items()}
        out = []
        for i, folder in enumerate(sorted(set(folders))):
            extra = (
                coords.get(folder.lower())
                or coords.get(display_name(folder).lower())
                or KNOWN_PLACES.get(folder.lower())
                or {}
            )
            out.append(
                Landmark(
                    id=i,
                    folder=folder,
                    name=extra.get("name") or display_name(folder),
                    lat=_opt_float(extra.get("lat")),
                    lon=_opt_float(extra.get("lon")),
                    country=extra.get("country") or None,
                )
            )
        return cls(out, name=name)


COORDS_HEADER = "folder,lat,lon[,country]"  # the CSV's header line as train and `catalog add` say it


def load_coords(path: str | Path) -> dict[str, dict]:
    """Read landmark coordinates from CSV (columns folder|name, lat, lon[, country]) or JSON.

    JSON is either ``{folder: {lat, lon, country}}`` or a list of such objects with a ``folder`` or ``name`` key.
    Every row is checked here, so that an error names the file and the row's line (CSV) or key (JSON): later,
    the catalog knows only the folder it was matched to.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a BOM: a CSV saved by a spreadsheet)
    except UnicodeDecodeError:
        raise CatalogError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise CatalogError(f"{path}: cannot read it ({e.strerror or e})") from None
    rows = _json_rows(path, text) if path.suffix.lower() == ".json" else _csv_rows(path, text)
    out = {}
    for where, row in rows:
        key = row.get("folder") or row.get("name")
        if not key:
            raise CatalogError(f"{path} {where}: each row needs a 'folder' or 'name'")
        out[str(key).strip()] = _coords_row(f"{path} {where}", row)
    return out


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """(``line N``, row) of a CSV whose header names its columns (a header-less file's first row is no header)."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return []
    given = ",".join(reader.fieldnames)
    reader.fieldnames = header = [h.strip().lower() for h in reader.fieldnames]
    # other columns (notes, a source) are a spreadsheet's and are ignored; a file without a header line has its
    # first row taken for one, which names neither a folder nor lat and lon
    missing = [c for c in ("lat", "lon") if c not in header]
    if missing or not {"folder", "name"} & set(header):
        what = f"no {' or '.join(map(repr, missing))} column" if missing else "no 'folder' or 'name' column"
        raise CatalogError(
            f"{path} line 1: header {given!r} has {what}: expected the header line {COORDS_HEADER} "
            "(or name in place of folder; a file without a header line has its first row taken for one)"
        )
    return [(f"line {reader.line_num}", row) for row in reader]


def _json_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """(``entry KEY`` or ``entry N``, row) of ``{folder: {...}}`` or ``[{folder|name: ...}, ...]``."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CatalogError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        rows = [(f"entry {k!r}", {"folder": k, **v} if isinstance(v, dict) else v) for k, v in data.items()]
    elif isinstance(data, list):
        rows = [(f"entry {i + 1}", v) for i, v in enumerate(data)]
    else:
        raise CatalogError(f"{path}: expected an object of folder -> {{lat, lon, country}}, or a list of them")
    for where, row in rows:
        if not isinstance(row, dict):
            raise CatalogError(f"{path} {where}: expected an object with lat, lon[, country], got {row!r}")
    return rows


def _coords_row(where: str, row: dict) -> dict:
    """A row's entry for from_folders (lat, lon as floats or None), or a CatalogError naming ``where``."""
    lat, lon = _coord(where, row, "lat", 90), _coord(where, row, "lon", 180)
    if (lat is None) != (lon is None):
        raise CatalogError(f"{where}: lat and lon must both be set or both be empty")
    return {**{k: v for k, v in row.items() if k not in ("folder", None)}, "lat": lat, "lon": lon}


def _coord(where: str, row: dict, key: str, limit: float) -> float | None:
    v = row.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise CatalogError(f"{where}: {key} {v!r} is not a number") from None
    if not -limit <= x <= limit:  # (NaN too)
        raise CatalogError(f"{where}: {key} {v} is out of range (-{limit} to {limit})")
    return x


def unmatched_coords(coords: Mapping[str, Mapping], catalog: "Catalog") -> list[str]:
    """The keys of ``coords`` that name no landmark of ``catalog`` (as from_folders matches: folder or display
    name, any case): a misspelt folder's row would otherwise be ignored without a word."""
    known = {f.lower() for f in catalog.folders} | {display_name(f).lower() for f in catalog.folders}
    return [k for k in coords if k.lower() not in known]


def coords_file_beside(folder: str) -> str | None:
    """The coords.json or coords.csv at a local class-folder root (as the synthetic generator writes one), else
    None: train's --data and catalog's --from-folders read it when no --coords is given."""
    if is_s3(folder):
        return None
    return next((str(p) for p in (Path(folder, "coords.json"), Path(folder, "coords.csv")) if p.is_file()), None)


def coords_file_note(
    coords: Mapping[str, Mapping] | None, catalog: "Catalog", coords_file: str, what: str
) -> str | None:
    """A coordinates file that gives no row (a header-less one-line CSV) or rows no folder matches (a misspelt
    folder): else it would be ignored without a word. ``what`` names the folders' flag ("class folder of --data")."""
    if coords is None:
        return None
    if not coords:
        return f"{coords_file} has no rows: expected the header line {COORDS_HEADER}, then a row each"
    if stray := unmatched_coords(coords, catalog):
        return (
            f"{coords_file}: {len(stray)} of its {len(coords)} rows {'names' if len(stray) == 1 else 'name'} no "
            f"{what}, ignored: {listed(stray)} (the folders: {listed(catalog.folders)})"
        )
    return None


def listed(names: list[str], at_most: int = 5) -> str:
    """'a', 'b', 'c' and 2 more: names in a one-line message."""
    more = len(names) - at_most
    return ", ".join(repr(n) for n in names[:at_most]) + (f" and {more} more" if more > 0 else "")


def same_name_folders(catalog: "Catalog") -> tuple[str, str, str] | None:
    """Two folders whose landmarks share a name or a folder name, any case ('sapa' and 'Sapa', or two folders
    the known places name alike): (folder, folder, name), else None. Tags and queries could not tell them apart."""
    seen: dict[str, str] = {}
    for lm in catalog:
        for key in {lm.folder.lower(), lm.name.lower()}:
            if key in seen and seen[key] != lm.folder:
                return seen[key], lm.folder, lm.name
            seen[key] = lm.folder
    return None


def _opt_float(v) -> float | None:
    if v is None or v == "":
        return None
    return float(v)


def _check_coords(lm: Landmark) -> None:
    if (lm.lat is None) != (lm.lon is None):
        raise CatalogError(f"{lm.folder}: lat and lon must both be set or both be empty")
    if lm.lat is not None and not (-90 <= lm.lat <= 90 and -180 <= lm.lon <= 180):
        raise CatalogError(f"{lm.folder}: coordinates out of range ({lm.lat}, {lm.lon})")


EARTH_RADIUS_KM = 6371.0088  # the mean radius (also tagstore's SQL macro haversine_km)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (the query's ``--near`` runs the same formula in SQL: tagstore.MACROS)."""
    r = EARTH_RADIUS_KM
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


# folder, lat, lon, country. A representative point for each landmark; for an area (national park, reef, sea,
# the Great Wall) its centre or most-visited point.
_UDACITY_50 = [
    ("00.Haleakala_National_Park", 20.7204, -156.1552, "US"),
    ("01.Mount_Rainier_National_Park", 46.8523, -121.7603, "US"),
    ("02.Ljubljana_Castle", 46.0489, 14.5086, "SI"),
    ("03.Dead_Sea", 31.5590, 35.4732, "IL"),
    ("04.Wroclaws_Dwarves", 51.1100, 17.0320, "PL"),
    ("05.London_Olympic_Stadium", 51.5387, -0.0166, "GB"),
    ("06.Niagara_Falls", 43.0799, -79.0747, "CA"),
    ("07.Stonehenge", 51.1789, -1.8262, "GB"),
    ("08.Grand_Canyon", 36.1069, -112.1129, "US"),
    ("09.Golden_Gate_Bridge", 37.8199, -122.4783, "US"),
    ("10.Edinburgh_Castle", 55.9486, -3.1999, "GB"),
    ("11.Mount_Rushmore_National_Memorial", 43.8791, -103.4591, "US"),
    ("12.Kantanagar_Temple", 25.7904, 88.6739, "BD"),
    ("13.Yellowstone_National_Park", 44.4280, -110.5885, "US"),
    ("14.Terminal_Tower", 41.4985, -81.6937, "US"),
    ("15.Central_Park", 40.7829, -73.9654, "US"),
    ("16.Eiffel_Tower", 48.8584, 2.2945, "FR"),
    ("17.Changdeokgung", 37.5794, 126.9910, "KR"),
    ("18.Delicate_Arch", 38.7436, -109.4993, "US"),
    ("19.Vienna_City_Hall", 48.2108, 16.3574, "AT"),
    ("20.Matterhorn", 45.9763, 7.6586, "CH"),
    ("21.Taj_Mahal", 27.1751, 78.0421, "IN"),
    ("22.Moscow_Raceway", 56.0003, 36.2689, "RU"),
    ("23.Externsteine", 51.8689, 8.9172, "DE"),
    ("24.Soreq_Cave", 31.7566, 35.0222, "IL"),
    ("25.Banff_National_Park", 51.4968, -115.9281, "CA"),
    ("26.Pont_du_Gard", 43.9475, 4.5350, "FR"),
    ("27.Seattle_Japanese_Garden", 47.6290, -122.2964, "US"),
    ("28.Sydney_Harbour_Bridge", -33.8523, 151.2108, "AU"),
    ("29.Petronas_Towers", 3.1578, 101.7117, "MY"),
    ("30.Brooklyn_Bridge", 40.7061, -73.9969, "US"),
    ("31.Washington_Monument", 38.8895, -77.0353, "US"),
    ("32.Hanging_Temple", 39.6737, 113.7358, "CN"),
    ("33.Sydney_Opera_House", -33.8568, 151.2153, "AU"),
    ("34.Great_Barrier_Reef", -18.2871, 147.6992, "AU"),
    ("35.Monumento_a_la_Revolucion", 19.4361, -99.1547, "MX"),
    ("36.Badlands_National_Park", 43.8554, -102.3397, "US"),
    ("37.Atomium", 50.8949, 4.3415, "BE"),
    ("38.Forth_Bridge", 56.0006, -3.3884, "GB"),
    ("39.Gateway_of_India", 18.9220, 72.8347, "IN"),
    ("40.Stockholm_City_Hall", 59.3275, 18.0543, "SE"),
    ("41.Machu_Picchu", -13.1631, -72.5450, "PE"),
    ("42.Death_Valley_National_Park", 36.5054, -117.0794, "US"),
    ("43.Gullfoss_Falls", 64.3271, -20.1199, "IS"),
    ("44.Trevi_Fountain", 41.9009, 12.4833, "IT"),
    ("45.Temple_of_Heaven", 39.8822, 116.4066, "CN"),
    ("46.Great_Wall_of_China", 40.3598, 116.0200, "CN"),
    ("47.Prague_Astronomical_Clock", 50.0870, 14.4207, "CZ"),
    ("48.Whitby_Abbey", 54.4886, -0.6078, "GB"),
    ("49.Temple_of_Olympian_Zeus", 37.9693, 23.7331, "GR"),
]

UDACITY_50 = Catalog(
    [
        Landmark(id=i, folder=f, name=display_name(f), lat=lat, lon=lon, country=cc)
        for i, (f, lat, lon, cc) in enumerate(_UDACITY_50)
    ],
    name="udacity-50",
)

# folder, display name, lat, lon, country: the real landmark sets this project benchmarks on (class folders of
# the vietnam and porto sets), so catalogs made from them carry locations without a coords file.
_BENCHMARK_SETS = [
    ("halong_bay", "Ha Long Bay", 20.9101, 107.1839, "VN"),
    ("hochiminh_mausoleum", "Ho Chi Minh Mausoleum", 21.0368, 105.8346, "VN"),
    ("hoian_town", "Hoi An Ancient Town", 15.8770, 108.3280, "VN"),
    ("hue_imperial_city", "Imperial City of Hue", 16.4695, 107.5775, "VN"),
    ("sapa_rice_terraces", "Sa Pa Rice Terraces", 22.3364, 103.8438, "VN"),
    ("arrabida", "Arrabida Bridge", 41.1473, -8.6403, "PT"),
    ("camara", "Porto City Hall", 41.1500, -8.6108, "PT"),
    ("clerigos", "Clerigos Tower", 41.1457, -8.6146, "PT"),
    ("musica", "Casa da Musica", 41.1588, -8.6307, "PT"),
    ("serralves", "Serralves Museum", 41.1597, -8.6597, "PT"),
]

KNOWN_PLACES: dict[str, dict] = {
    **{lm.folder.lower(): {"name": lm.name, "lat": lm.lat, "lon": lm.lon, "country": lm.country} for lm in UDACITY_50},
    **{f: {"name": n, "lat": lat, "lon": lon, "country": cc} for f, n, lat, lon, cc in _BENCHMARK_SETS},
}


def no_location_note(missing: list[str], total: int, *, what: str, how: str) -> str | None:
    """The warning train and `catalog add` print for landmarks with no location: a tag naming one cannot say where
    the photo was taken, the product's point. ``missing``: their names or folders; ``how``: what to give."""
    if not missing:
        return None
    shown = ", ".join(repr(f) for f in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (
        f"warning: {len(missing)} of {total} {what} have no location ({shown}): their tags will name the landmark "
        f"with no latitude/longitude. Give {how}"
    )
