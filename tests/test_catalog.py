"""The landmark catalog: the 50 Udacity landmarks, lookups, custom catalogs from folders + coordinates, validation."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from landmark_core.catalog import (
    UDACITY_50,
    Catalog,
    CatalogError,
    Landmark,
    display_name,
    haversine_km,
    load_coords,
)

# The Udacity "Landmark Classification & Tagging" class folders, in the dataset's order.
UDACITY_FOLDERS = [
    "00.Haleakala_National_Park",
    "01.Mount_Rainier_National_Park",
    "02.Ljubljana_Castle",
    "03.Dead_Sea",
    "04.Wroclaws_Dwarves",
    "05.London_Olympic_Stadium",
    "06.Niagara_Falls",
    "07.Stonehenge",
    "08.Grand_Canyon",
    "09.Golden_Gate_Bridge",
    "10.Edinburgh_Castle",
    "11.Mount_Rushmore_National_Memorial",
    "12.Kantanagar_Temple",
    "13.Yellowstone_National_Park",
    "14.Terminal_Tower",
    "15.Central_Park",
    "16.Eiffel_Tower",
    "17.Changdeokgung",
    "18.Delicate_Arch",
    "19.Vienna_City_Hall",
    "20.Matterhorn",
    "21.Taj_Mahal",
    "22.Moscow_Raceway",
    "23.Externsteine",
    "24.Soreq_Cave",
    "25.Banff_National_Park",
    "26.Pont_du_Gard",
    "27.Seattle_Japanese_Garden",
    "28.Sydney_Harbour_Bridge",
    "29.Petronas_Towers",
    "30.Brooklyn_Bridge",
    "31.Washington_Monument",
    "32.Hanging_Temple",
    "33.Sydney_Opera_House",
    "34.Great_Barrier_Reef",
    "35.Monumento_a_la_Revolucion",
    "36.Badlands_National_Park",
    "37.Atomium",
    "38.Forth_Bridge",
    "39.Gateway_of_India",
    "40.Stockholm_City_Hall",
    "41.Machu_Picchu",
    "42.Death_Valley_National_Park",
    "43.Gullfoss_Falls",
    "44.Trevi_Fountain",
    "45.Temple_of_Heaven",
    "46.Great_Wall_of_China",
    "47.Prague_Astronomical_Clock",
    "48.Whitby_Abbey",
    "49.Temple_of_Olympian_Zeus",
]

# Independent reference positions (public gazetteer values, not copied from the catalog), degrees.
REFERENCE = {
    "Eiffel Tower": (48.8584, 2.2945, "FR"),
    "Golden Gate Bridge": (37.8199, -122.4783, "US"),
    "Sydney Opera House": (-33.8568, 151.2153, "AU"),
    "Taj Mahal": (27.1751, 78.0421, "IN"),
    "Stonehenge": (51.1789, -1.8262, "GB"),
    "Trevi Fountain": (41.9009, 12.4833, "IT"),
    "Machu Picchu": (-13.1631, -72.5450, "PE"),
    "Petronas Towers": (3.1579, 101.7116, "MY"),
    "Atomium": (50.8950, 4.3417, "BE"),
    "Washington Monument": (38.8895, -77.0353, "US"),
    "Matterhorn": (45.9766, 7.6585, "CH"),
    "Brooklyn Bridge": (40.7057, -73.9964, "US"),
    "Edinburgh Castle": (55.9486, -3.2008, "GB"),
    "Temple of Olympian Zeus": (37.9693, 23.7331, "GR"),
}

# Rough bounding boxes (lat_min, lat_max, lon_min, lon_max) per country: catches a swapped sign or lat/lon.
COUNTRY_BOX = {
    "US": (18, 72, -170, -65),
    "GB": (49, 61, -9, 2),
    "AU": (-44, -10, 112, 154),
    "CA": (41, 84, -141, -52),
    "FR": (41, 52, -5, 10),
    "IL": (29, 34, 34, 36),
    "CN": (18, 54, 73, 135),
    "IN": (6, 36, 68, 98),
}


# ------------------------------------------------------------------------------------------------ Udacity 50


def test_udacity_50_has_the_50_classes_in_dataset_order():
    assert len(UDACITY_50) == 50
    assert UDACITY_50.name == "udacity-50"
    assert UDACITY_50.folders == UDACITY_FOLDERS
    assert [lm.id for lm in UDACITY_50] == list(range(50))
    assert UDACITY_50[9].folder == "09.Golden_Gate_Bridge"
    assert UDACITY_50[49].folder == "49.Temple_of_Olympian_Zeus"
    assert UDACITY_50[0].folder == "00.Haleakala_National_Park"


def test_udacity_50_display_names():
    assert UDACITY_50[9].name == "Golden Gate Bridge"
    assert UDACITY_50[49].name == "Temple of Olympian Zeus"
    assert UDACITY_50[35].name == "Monumento a la Revolucion"  # lower-case words kept as in the folder
    assert UDACITY_50[26].name == "Pont du Gard"
    assert UDACITY_50[4].name == "Wroclaws Dwarves"
    assert len(set(UDACITY_50.names)) == 50
    for lm in UDACITY_50:
        assert "_" not in lm.name and not lm.name[0].isdigit(), lm


@pytest.mark.parametrize("lm", list(UDACITY_50), ids=lambda lm: lm.folder)
def test_every_udacity_landmark_has_coordinates_and_a_country(lm: Landmark):
    assert isinstance(lm.lat, float) and isinstance(lm.lon, float)
    assert -90 <= lm.lat <= 90 and -180 <= lm.lon <= 180
    assert not (lm.lat == 0 and lm.lon == 0)  # no placeholder "null island"
    assert isinstance(lm.country, str) and len(lm.country) == 2 and lm.country.isupper() and lm.country.isalpha()
    box = COUNTRY_BOX.get(lm.country)
    if box:
        lat0, lat1, lon0, lon1 = box
        assert lat0 <= lm.lat <= lat1 and lon0 <= lm.lon <= lon1, f"{lm.folder} not inside {lm.country}"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_spot_checked_coordinates_within_1_km(name):
    lat, lon, country = REFERENCE[name]
    lm = UDACITY_50.find(name)
    assert haversine_km(lm.lat, lm.lon, lat, lon) < 1.0, (lm, lat, lon)
    assert lm.country == country


def test_haversine_known_distances():
    assert haversine_km(0, 0, 0, 0) == 0
    assert haversine_km(0, 0, 0, 1) == pytest.approx(111.195, abs=0.01)  # one degree on the equator
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088, rel=1e-9)  # half a great circle
    assert haversine_km(90, 0, -90, 0) == pytest.approx(math.pi * 6371.0088, rel=1e-9)
    assert haversine_km(10, 170, 10, -170) == pytest.approx(haversine_km(10, -10, 10, 10))  # across 180°
    eiffel, opera = UDACITY_50.find("Eiffel Tower"), UDACITY_50.find("Sydney Opera House")
    d = haversine_km(eiffel.lat, eiffel.lon, opera.lat, opera.lon)
    assert d == pytest.approx(16_960, rel=0.01)  # Paris - Sydney
    assert d == pytest.approx(haversine_km(opera.lat, opera.lon, eiffel.lat, eiffel.lon))


# --------------------------------------------------------------------------------------------------- lookups


@pytest.mark.parametrize(
    "key", ["Eiffel Tower", "eiffel tower", "EIFFEL TOWER", "16.Eiffel_Tower", "16.eiffel_tower", "  Eiffel Tower  "]
)
def test_find_by_display_name_or_folder_case_insensitive(key):
    lm = UDACITY_50.find(key)
    assert lm.id == 16 and lm.folder == "16.Eiffel_Tower"


def test_find_unknown_name_raises_catalog_error_naming_it():
    with pytest.raises(CatalogError, match="Big Ben") as ei:
        UDACITY_50.find("Big Ben")
    assert "udacity-50" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_display_name():
    assert display_name("09.Golden_Gate_Bridge") == "Golden Gate Bridge"
    assert display_name("halong_bay") == "Halong Bay"
    assert display_name("3-notre-dame") == "Notre Dame"
    assert display_name("Big_Ben") == "Big Ben"


# ------------------------------------------------------------------------------------------- custom catalogs


FOLDERS = ["02.halong_bay", "00.Big_Ben", "01.Colosseum"]


def test_from_folders_sorts_and_names_without_coords():
    cat = Catalog.from_folders(FOLDERS + ["00.Big_Ben"], name="mine")
    assert cat.folders == ["00.Big_Ben", "01.Colosseum", "02.halong_bay"]  # sorted, deduplicated
    assert cat.names == ["Big Ben", "Colosseum", "Halong Bay"]
    assert cat.name == "mine"
    assert all(lm.lat is None and lm.lon is None and lm.country is None for lm in cat)
    assert cat.without_location == cat.folders


def test_from_folders_with_coords_csv(tmp_path):
    csv_path = tmp_path / "coords.csv"
    csv_path.write_text(
        "folder,lat,lon,country\n"
        "00.Big_Ben,51.5007,-0.1246,GB\n"
        "01.colosseum,41.8902,12.4922,IT\n"  # folder keys match case-insensitively
        "02.halong_bay,,,\n"  # empty values -> no coordinates
    )
    cat = Catalog.from_folders(FOLDERS, coords=load_coords(csv_path))
    big_ben, colosseum, halong = cat
    assert (big_ben.lat, big_ben.lon, big_ben.country) == (51.5007, -0.1246, "GB")
    assert (colosseum.lat, colosseum.lon, colosseum.country) == (41.8902, 12.4922, "IT")
    assert (halong.lat, halong.lon, halong.country) == (None, None, None)
    assert big_ben.name == "Big Ben"


def test_from_folders_with_coords_csv_keyed_by_display_name(tmp_path):
    csv_path = tmp_path / "coords.csv"
    csv_path.write_text("name,lat,lon\nHalong Bay,20.9101,107.1839\n")
    cat = Catalog.from_folders(FOLDERS, coords=load_coords(csv_path))
    halong = cat.find("halong bay")
    assert (halong.lat, halong.lon) == (20.9101, 107.1839)
    assert halong.name == "Halong Bay"
    assert cat.find("Big Ben").lat is None


def test_from_folders_with_coords_json_dict_and_list(tmp_path):
    as_dict = tmp_path / "coords.json"
    as_dict.write_text(
        json.dumps(
            {
                "00.Big_Ben": {"lat": 51.5007, "lon": -0.1246, "country": "GB", "name": "Elizabeth Tower"},
                "Colosseum": {"lat": "41.8902", "lon": "12.4922"},  # by display name; numbers as strings are fine
            }
        )
    )
    cat = Catalog.from_folders(FOLDERS, coords=load_coords(as_dict))
    assert cat[0].name == "Elizabeth Tower" and cat[0].country == "GB"
    assert cat.find("Elizabeth Tower") is cat[0]
    assert (cat[1].lat, cat[1].lon) == (41.8902, 12.4922)

    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"folder": "02.halong_bay", "lat": 20.9101, "lon": 107.1839, "country": "VN"}]))
    cat2 = Catalog.from_folders(FOLDERS, coords=load_coords(as_list))
    assert (cat2[2].lat, cat2[2].lon, cat2[2].country) == (20.9101, 107.1839, "VN")


def test_load_coords_row_without_key_is_an_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("lat,lon\n1,2\n")
    with pytest.raises(CatalogError, match="folder"):
        load_coords(p)


def test_json_round_trip():
    for cat in (
        UDACITY_50,
        Catalog.from_folders(FOLDERS, coords={"00.Big_Ben": {"lat": 51.5, "lon": -0.12}}, name="mine"),
    ):
        text = json.dumps(cat.to_json())
        back = Catalog.from_json(json.loads(text))
        assert back == cat
        assert back.name == cat.name
        assert back.landmarks == cat.landmarks
    assert UDACITY_50 != Catalog.from_folders(FOLDERS)
    assert UDACITY_50 != "udacity-50"


def test_from_json_malformed():
    with pytest.raises(CatalogError, match="malformed"):
        Catalog.from_json({"name": "x"})
    with pytest.raises(CatalogError, match="malformed"):
        Catalog.from_json({"landmarks": [{"id": 0, "folder": "a", "name": "A", "height": 3}]})


# ------------------------------------------------------------------------------------------------ validation


def test_ids_must_be_0_to_n_minus_1_in_order():
    with pytest.raises(CatalogError, match="ids"):
        Catalog([Landmark(1, "a", "A")])
    with pytest.raises(CatalogError, match="ids"):
        Catalog([Landmark(0, "a", "A"), Landmark(2, "b", "B")])
    with pytest.raises(CatalogError, match="ids"):
        Catalog([Landmark(1, "b", "B"), Landmark(0, "a", "A")])


@pytest.mark.parametrize("lat,lon", [(10.0, None), (None, 10.0)])
def test_lat_without_lon_and_lon_without_lat(lat, lon):
    with pytest.raises(CatalogError, match="both"):
        Catalog([Landmark(0, "a", "A", lat=lat, lon=lon)])


@pytest.mark.parametrize(
    "lat,lon", [(90.01, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0), (float("nan"), 0.0), (0.0, float("nan"))]
)
def test_coordinates_out_of_range(lat, lon):
    with pytest.raises(CatalogError, match="out of range"):
        Catalog([Landmark(0, "a", "A", lat=lat, lon=lon)])


def test_range_edges_are_allowed():
    cat = Catalog([Landmark(0, "a", "A", lat=90.0, lon=180.0), Landmark(1, "b", "B", lat=-90.0, lon=-180.0)])
    assert len(cat) == 2


def test_out_of_range_from_coords_file(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("folder,lat,lon\n00.Big_Ben,151.5,-0.12\n")
    with pytest.raises(CatalogError, match="out of range"):
        Catalog.from_folders(FOLDERS, coords=load_coords(p))


def test_empty_and_duplicate_catalogs_rejected():
    with pytest.raises(CatalogError, match="at least one"):
        Catalog([])
    with pytest.raises(CatalogError, match="duplicate"):
        Catalog([Landmark(0, "a", "A"), Landmark(1, "a", "B")])


def test_catalog_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        UDACITY_50[0].lat = 0.0
    assert isinstance(UDACITY_50.landmarks, tuple)


def test_from_folders_knows_the_udacity_and_benchmark_landmarks_locations():
    # Training on the Udacity class folders (or the real benchmark sets) needs no coords file to give locations.
    cat = Catalog.from_folders(UDACITY_FOLDERS)
    assert [(lm.name, lm.lat, lm.lon, lm.country) for lm in cat] == [
        (lm.name, lm.lat, lm.lon, lm.country) for lm in UDACITY_50
    ]
    vn = Catalog.from_folders(["sapa_rice_terraces", "halong_bay", "not_a_known_place"])
    halong, unknown, sapa = vn
    assert (halong.name, halong.country) == ("Ha Long Bay", "VN") and 20 < halong.lat < 21.5
    assert sapa.name == "Sa Pa Rice Terraces" and 103 < sapa.lon < 104.5
    assert (unknown.name, unknown.lat, unknown.lon) == ("Not A Known Place", None, None)
    # An explicit coords entry wins over what the project knows.
    own = Catalog.from_folders(["halong_bay"], coords={"halong_bay": {"lat": 1.0, "lon": 2.0}})
    assert (own[0].lat, own[0].lon, own[0].name) == (1.0, 2.0, "Halong Bay")


# ------------------------------------------------------------------------------------------------ coords files


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "folder,lat,lon,country\n00.Big_Ben,51.5,-0.12,GB\nhoian_town,abc,108.3,VN\n",
            "line 3: lat 'abc' is not a number",
        ),
        ("folder,lat,lon\n00.Big_Ben,123,107.18\n", "line 2: lat 123 is out of range (-90 to 90)"),
        ("folder,lat,lon\n00.Big_Ben,1,-181\n", "line 2: lon -181 is out of range"),
        ("folder,lat,lon\n00.Big_Ben,nan,1\n", "line 2: lat nan is out of range"),
        ("folder,lat,lon\n00.Big_Ben,21,\n", "line 2: lat and lon must both be set or both be empty"),
        ("hoian_town,15.8,108.3,VN\nhalong_bay,20.9,107.2,VN\n", "line 1: header 'hoian_town,15.8,108.3,VN'"),
        ("folder,latitude,longitude\n00.Big_Ben,1,2\n", "no 'lat' or 'lon' column"),
    ],
)
def test_a_bad_coords_row_is_named_by_file_and_line(tmp_path, text, message):
    """A row's error names the file and its line (it was told as the matched folder, under --data, or as float()'s
    "could not convert string to float"), for every reader of the file: train and `catalog add`."""
    p = tmp_path / "coords.csv"
    p.write_text(text)
    with pytest.raises(CatalogError) as e:
        load_coords(p)
    assert str(e.value).startswith(f"{p} line ") and message in str(e.value), str(e.value)


def test_coords_csv_columns_beyond_the_header_are_ignored(tmp_path):
    """A spreadsheet's extra column (notes) does not stop the file from loading; header names take any case."""
    p = tmp_path / "coords.csv"
    p.write_text("Folder,Lat,Lon,notes\n00.Big_Ben,51.5,-0.12,the clock\n")
    assert load_coords(p)["00.Big_Ben"]["lat"] == 51.5 and load_coords(p)["00.Big_Ben"]["lon"] == -0.12


@pytest.mark.parametrize(
    "data, message",
    [
        ({"00.Big_Ben": {"lat": "abc", "lon": 1}}, "entry '00.Big_Ben': lat 'abc' is not a number"),
        ({"00.Big_Ben": [51.5, -0.12]}, "entry '00.Big_Ben': expected an object"),
        ([{"folder": "00.Big_Ben", "lat": 1}], "entry 1: lat and lon must both be set"),
        ([7], "entry 1: expected an object"),
        (3, "expected an object of folder"),
    ],
)
def test_a_bad_coords_json_entry_is_named(tmp_path, data, message):
    p = tmp_path / "coords.json"
    p.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match="^" + str(p)) as e:
        load_coords(p)
    assert message in str(e.value), str(e.value)


def test_coords_header_is_read_whatever_its_case_spaces_or_bom(tmp_path):
    p = tmp_path / "coords.csv"
    p.write_text("\ufeffFolder, Lat, Lon\n 00.Big_Ben ,51.5,-0.12\n", encoding="utf-8")
    assert load_coords(p) == {"00.Big_Ben": {"lat": 51.5, "lon": -0.12}}


def test_coords_rows_that_name_no_folder_are_found():
    from landmark_core.catalog import unmatched_coords

    cat = Catalog.from_folders(FOLDERS)
    coords = {"00.big_ben": {}, "Colosseum": {}, "my_cafee": {}, "HALONG BAY": {}}
    assert unmatched_coords(coords, cat) == ["my_cafee"]  # folder or display name, any case: as from_folders


@pytest.mark.parametrize(
    "folders, coords, clash",
    [
        (["sapa_rice_terraces", "Sapa_Rice_Terraces"], None, ("Sapa_Rice_Terraces", "sapa_rice_terraces")),
        (["halong_bay", "Ha Long Bay"], None, ("Ha Long Bay", "halong_bay")),  # the known places' name
        (["a", "b"], {"a": {"name": "Same"}, "b": {"name": "same"}}, ("a", "b")),
    ],
)
def test_folders_that_make_one_landmark_name_are_found(folders, coords, clash):
    from landmark_core.catalog import same_name_folders

    assert same_name_folders(Catalog.from_folders(folders, coords=coords))[:2] == clash
    assert same_name_folders(Catalog.from_folders(FOLDERS)) is None
