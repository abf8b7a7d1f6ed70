"""The upload page `landmark serve` answers at `/`: one self-contained HTML file (inline CSS, JS and SVG map).

Nothing is loaded from the network but the app's own `v1/tag`: it works air-gapped. The map is an
equirectangular SVG (x = lon + 180, y = 90 - lat) with a graticule and coarse continent outlines drawn from the
few hundred coordinates below, so a marker shows where a landmark is without map tiles.
"""

# Coarse continent outlines, (lon, lat) vertices; enough to place a marker, not a cartographic map.
_OUTLINES = {
    "north_america": [
        (-165, 62),
        (-166, 68),
        (-156, 71),
        (-140, 70),
        (-125, 70),
        (-110, 68),
        (-95, 72),
        (-80, 73),
        (-70, 67),
        (-62, 60),
        (-56, 52),
        (-66, 45),
        (-70, 42),
        (-76, 35),
        (-81, 31),
        (-80, 25),
        (-82, 28),
        (-90, 30),
        (-97, 27),
        (-97, 21),
        (-91, 19),
        (-87, 21),
        (-88, 15),
        (-83, 10),
        (-79, 9),
        (-77, 8),
        (-80, 7),
        (-86, 11),
        (-92, 14),
        (-105, 20),
        (-110, 23),
        (-115, 30),
        (-118, 34),
        (-123, 38),
        (-124, 42),
        (-124, 48),
        (-130, 54),
        (-140, 60),
        (-152, 59),
        (-160, 56),
        (-165, 54),
        (-158, 58),
    ],
    "greenland": [(-52, 60), (-42, 60), (-22, 70), (-18, 77), (-30, 83), (-60, 82), (-72, 78), (-58, 75), (-52, 68)],
    "south_america": [
        (-77, 8),
        (-72, 12),
        (-62, 10),
        (-52, 5),
        (-35, -5),
        (-38, -13),
        (-41, -22),
        (-48, -26),
        (-53, -34),
        (-58, -38),
        (-65, -42),
        (-68, -52),
        (-72, -54),
        (-75, -48),
        (-73, -38),
        (-71, -30),
        (-70, -18),
        (-76, -14),
        (-81, -5),
        (-80, 1),
    ],
    "eurasia": [
        (-9, 37),
        (-9, 43),
        (-2, 44),
        (-5, 48),
        (2, 51),
        (8, 54),
        (10, 57),
        (5, 59),
        (5, 62),
        (14, 67),
        (24, 71),
        (30, 70),
        (40, 67),
        (44, 68),
        (60, 69),
        (70, 73),
        (80, 73),
        (100, 77),
        (112, 74),
        (130, 71),
        (150, 71),
        (170, 70),
        (180, 66),
        (170, 60),
        (160, 55),
        (156, 51),
        (142, 59),
        (135, 55),
        (141, 48),
        (130, 42),
        (127, 39),
        (126, 35),
        (120, 37),
        (122, 31),
        (120, 24),
        (110, 20),
        (108, 12),
        (105, 9),
        (100, 13),
        (100, 7),
        (103, 1),
        (98, 8),
        (94, 16),
        (90, 22),
        (80, 15),
        (77, 8),
        (73, 18),
        (67, 24),
        (57, 25),
        (56, 27),
        (50, 30),
        (48, 29),
        (52, 24),
        (56, 25),
        (59, 22),
        (52, 16),
        (45, 13),
        (43, 15),
        (35, 28),
        (33, 31),
        (35, 36),
        (27, 37),
        (26, 40),
        (24, 38),
        (22, 37),
        (19, 42),
        (13, 45),
        (12, 44),
        (16, 40),
        (15, 38),
        (12, 42),
        (8, 44),
        (3, 43),
        (0, 39),
        (-5, 36),
    ],
    "africa": [
        (-17, 15),
        (-16, 22),
        (-13, 28),
        (-6, 35),
        (10, 37),
        (11, 33),
        (20, 31),
        (32, 31),
        (34, 27),
        (38, 18),
        (43, 12),
        (51, 12),
        (46, 2),
        (40, -5),
        (40, -15),
        (35, -24),
        (32, -29),
        (27, -34),
        (19, -35),
        (17, -29),
        (12, -17),
        (13, -9),
        (9, -1),
        (9, 4),
        (5, 6),
        (-5, 5),
        (-10, 6),
        (-15, 11),
    ],
    "australia": [
        (114, -22),
        (113, -26),
        (115, -34),
        (124, -34),
        (131, -31),
        (138, -35),
        (141, -38),
        (147, -38),
        (150, -37),
        (153, -30),
        (153, -25),
        (146, -19),
        (142, -11),
        (141, -17),
        (136, -12),
        (130, -12),
        (126, -14),
        (122, -18),
    ],
    "britain": [(-5, 50), (1, 51), (2, 53), (-2, 56), (-3, 58), (-6, 58), (-5, 55), (-3, 54), (-5, 52)],
    "ireland": [(-10, 52), (-6, 52), (-6, 55), (-8, 55), (-10, 54)],
    "iceland": [(-24, 65), (-14, 64), (-14, 66), (-22, 66)],
    "japan": [
        (130, 31),
        (132, 34),
        (135, 34),
        (140, 35),
        (141, 38),
        (142, 42),
        (145, 44),
        (141, 45),
        (140, 41),
        (138, 38),
        (136, 37),
        (132, 35),
        (130, 33),
    ],
    "madagascar": [(44, -25), (47, -25), (50, -15), (49, -12), (44, -17)],
    "new_zealand": [(172, -34), (178, -38), (175, -42), (170, -46), (167, -46), (172, -41)],
    "borneo": [(109, 1), (117, 7), (119, 1), (116, -4), (110, -3)],
    "sumatra": [(95, 5), (106, -6), (103, -5), (98, 1)],
    "antarctica": [
        (-180, -66),
        (-120, -72),
        (-60, -64),
        (0, -70),
        (60, -67),
        (120, -66),
        (180, -66),
        (180, -90),
        (-180, -90),
    ],
}


def _svg_map() -> str:
    polys = "".join(
        '<polygon points="' + " ".join(f"{lon + 180:g},{90 - lat:g}" for lon, lat in pts) + '"/>'
        for pts in _OUTLINES.values()
    )
    grid = "".join(f'<line x1="{x}" y1="0" x2="{x}" y2="180"/>' for x in range(0, 361, 30)) + "".join(
        f'<line x1="0" y1="{y}" x2="360" y2="{y}"/>' for y in range(0, 181, 30)
    )
    return (
        '<svg id="map" viewBox="0 0 360 180" role="img" aria-label="world map">'
        '<rect width="360" height="180" class="sea"/>'
        f'<g class="grid">{grid}</g><g class="land">{polys}</g>'
        '<g id="markers"></g></svg>'
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>landmark-tagger</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #222; }
header { background: #1f3b57; color: #fff; padding: 12px 24px; font-size: 20px; }
main { display: grid; grid-template-columns: minmax(280px, 1fr) minmax(320px, 1.2fr); gap: 20px; padding: 20px 24px; }
#drop { border: 2px dashed #7a8ca0; border-radius: 10px; padding: 18px; text-align: center; background: #fff; }
#drop.over { background: #e6f0fa; border-color: #1f6fb2; }
#preview { max-width: 100%; max-height: 420px; margin-top: 12px; display: none; border-radius: 6px; }
.card { background: #fff; border-radius: 10px; padding: 16px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
#headline { font-size: 22px; font-weight: 600; margin: 0 0 6px; }
#headline.no_landmark { color: #8a5a00; } #headline.failed { color: #b00020; } #headline.tagged { color: #116530; }
table { border-collapse: collapse; width: 100%; margin: 10px 0; }
td { padding: 3px 6px; border-bottom: 1px solid #eee; }
.bar { background: #1f6fb2; height: 10px; border-radius: 3px; }
#map { width: 100%; background: #cfe3f3; border-radius: 6px; margin-top: 10px; }
#map .sea { fill: #cfe3f3; } #map .grid line { stroke: #a9c6de; stroke-width: .3; }
#map .land polygon { fill: #e9e4d4; stroke: #9a927a; stroke-width: .3; }
#map .mark { fill: #d7263d; stroke: #fff; stroke-width: .6; }
#map .gps { fill: #1f6fb2; stroke: #fff; stroke-width: .6; }
.muted { color: #666; font-size: 13px; }
</style></head>
<body>
<header>landmark-tagger: which landmark, and where</header>
<main>
<section>
  <div id="drop"><p>Drop a photo here, or</p>
    <input id="file" type="file" accept="image/*">
    <img id="preview" alt="the photo">
  </div>
</section>
<section class="card" id="result" data-state="idle">
  <p id="headline">Choose a photo to tag it.</p>
  <p id="coords" class="muted"></p>
  <p id="exif" class="muted"></p>
  <table id="tags"></table>
  __MAP__
  <p class="muted">Red: the landmark's location. Blue: the photo's own GPS (EXIF), when it has one.</p>
</section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (x) => (x === null || x === undefined) ? "" : Number(x).toFixed(5);
function marker(lat, lon, cls) {
  const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
  c.setAttribute("cx", lon + 180); c.setAttribute("cy", 90 - lat); c.setAttribute("r", cls === "mark" ? 4 : 2.2);
  c.setAttribute("class", cls); $("markers").appendChild(c);
}
function cell(row, text) { const td = row.insertCell(); td.textContent = text; return td; }
function render(r) {
  const h = $("headline");
  h.className = r.status;
  if (r.status === "tagged") h.textContent = r.landmark + " (" + (100 * r.score).toFixed(1) + "%)";
  else if (r.status === "no_landmark") h.textContent = "no landmark" + (r.tags && r.tags.length ?
      " (best guess " + r.tags[0].name + ", " + (100 * r.score).toFixed(1) + "%)" : "");
  else h.textContent = "failed: " + (r.error || "unknown error");
  $("coords").textContent = (r.lat !== null && r.lat !== undefined)
    ? "location: " + fmt(r.lat) + ", " + fmt(r.lon) : "";
  $("exif").textContent = (r.exif_lat !== null && r.exif_lat !== undefined) ?
      "photo's own GPS (EXIF): " + fmt(r.exif_lat) + ", " + fmt(r.exif_lon) :
      (r.status === "failed" ? "" : "no GPS in the photo");  // a failed photo was not read: nothing to say
  const t = $("tags"); t.textContent = "";
  for (const tag of (r.tags || [])) {
    const row = t.insertRow();
    cell(row, tag.name);
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = Math.max(1, Math.round(100 * tag.score)) + "px";
    row.insertCell().appendChild(bar);
    cell(row, (100 * tag.score).toFixed(1) + "%");
    cell(row, tag.lat === null ? "" : fmt(tag.lat) + ", " + fmt(tag.lon));
  }
  $("markers").textContent = "";
  if (r.lat !== null && r.lat !== undefined) marker(r.lat, r.lon, "mark");
  if (r.exif_lat !== null && r.exif_lat !== undefined) marker(r.exif_lat, r.exif_lon, "gps");
  $("result").dataset.status = r.status;
  $("result").dataset.state = "done";
}
async function tag(file) {
  if (!file) return;
  $("result").dataset.state = "pending";
  $("headline").className = ""; $("headline").textContent = "tagging " + file.name + " ...";
  const img = $("preview");
  img.onerror = () => { img.style.display = "none"; };  // a file the browser cannot show: no broken-image icon
  img.src = URL.createObjectURL(file); img.style.display = "block";
  const form = new FormData(); form.append("photo", file, file.name);
  try {
    const resp = await fetch("v1/tag", { method: "POST", body: form });
    let body;
    try { body = await resp.json(); } catch (e) { body = { status: "failed", error: "HTTP " + resp.status }; }
    render(body);
  } catch (e) {
    render({ status: "failed", error: "no answer from the server (" + e + ")" });
  }
}
$("file").addEventListener("change", () => tag($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over"); tag(e.dataTransfer.files[0]);
});
</script>
</body></html>
""".replace("__MAP__", _svg_map())
