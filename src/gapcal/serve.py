"""``gapcal serve``: a local web page over an index folder: a text box and an image upload, one mixed result
list with thumbnails, captions, modality badges and scores, and the raw (uncalibrated) ranking beside it on
request. The page calls a small JSON API:

* ``GET /api/info``: item counts, model, index spec, payload fields;
* ``POST /api/search``: JSON ``{"text": "...", "k": 10}``, or a form upload with an ``image`` file (and ``k``);
  answers ``{"modality", "results", "raw"}``, each hit with rank, id, modality, score and payload;
* ``GET /api/thumbnail/<id>``: a JPEG thumbnail of an indexed image item.

Errors answer ``{"error": "..."}`` with a 4xx status. Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import functools
import io
import threading

try:
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException
    from werkzeug.serving import make_server
except ImportError as exc:  # the optional extra is missing
    raise ImportError(f"gapcal serve needs the serve extra ({exc.name} is missing): pip install 'gapcal[serve]'") \
        from exc

from .folder import IndexFolder

MAX_UPLOAD = 32 * 1024 * 1024
MAX_K = 100
THUMBNAIL = 256


def create_app(folder: IndexFolder) -> Flask:
    """The Flask application serving ``folder``."""
    if not isinstance(folder, IndexFolder):
        raise TypeError(f"folder must be an IndexFolder, got {type(folder).__name__}")
    app = Flask("gapcal.serve")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    searching = threading.Lock()  # one query at a time through the encoder and the index: a local viewer

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return jsonify(error=exc.description), exc.code

    @app.errorhandler(ValueError)
    def bad_input(exc):
        return jsonify(error=str(exc)), 400

    @app.get("/")
    def page():
        return Response(PAGE, mimetype="text/html")

    @app.get("/api/info")
    def info():
        manifest = folder.manifest
        return jsonify(items={m: folder.index.count(m) for m in ("text", "image")}, model=str(folder.model),
                       index=folder.index.spec, fields=folder.fields, search_defaults=folder.index.search_defaults,
                       built_from=manifest["pairs"]["source"])

    @app.post("/api/search")
    def search():
        if request.files:
            upload = request.files.get("image")
            if upload is None:
                raise ValueError(f"expected the image file in a form field named 'image', got {sorted(request.files)}")
            query = {"image": upload.read()}
            k = request.form.get("k", "10")
        else:
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                raise ValueError('expected JSON {"text": "...", "k": 10} or a form upload with an image file')
            query, k = {"text": body["text"]}, body.get("k", 10)
        with searching:
            found = folder.search(**query, k=_check_k(k), raw=True)
        for hit in found["results"] + found["raw"]:
            if hit["modality"] == "image":
                hit["thumbnail"] = f"/api/thumbnail/{hit['id']}"
        return jsonify(found)

    @app.get("/api/thumbnail/<int:item_id>")
    def thumbnail(item_id: int):
        data = _thumbnail(folder, item_id)
        if data is None:
            return jsonify(error=f"no image item with id {item_id} in this index"), 404
        return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


def _check_k(value) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {value!r}") from None
    if isinstance(value, bool) or not 1 <= k <= MAX_K or (isinstance(value, float) and value != k):
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {value!r}")
    return k


@functools.lru_cache(maxsize=1024)
def _thumbnail_cached(path: str, mtime: float) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        small = ImageOps.exif_transpose(image).convert("RGB")
        small.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _thumbnail(folder: IndexFolder, item_id: int) -> bytes | None:
    file = folder.image_file(item_id)
    if file is None or not file.is_file():
        return None
    try:
        return _thumbnail_cached(str(file), file.stat().st_mtime)
    except OSError:
        return None


def serve(folder: IndexFolder, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``folder`` until interrupted (Ctrl-C). The model is loaded first, so a missing one stops here."""
    folder.encoder  # noqa: B018 - load the model now: errors before the server starts, no slow first query
    server = make_server(host, port, create_app(folder), threaded=True)
    print(f"gapcal serve: {len(folder.index)} items at http://{host}:{server.port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gapcal search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  #info { color: #666; font-size: .9rem; margin-bottom: 1rem; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; margin-bottom: 1rem; }
  #query { flex: 1; min-width: 16rem; padding: .45rem; font-size: 1rem; }
  button { padding: .45rem 1rem; font-size: 1rem; }
  #status { min-height: 1.2rem; color: #555; margin-bottom: .6rem; }
  #status.error { color: #b00020; font-weight: 600; }
  #lists { display: grid; grid-template-columns: 1fr; gap: 1.5rem; }
  #lists.compare { grid-template-columns: 1fr 1fr; }
  #raw-column { display: none; }
  #lists.compare #raw-column { display: block; }
  h2 { font-size: 1rem; margin: 0 0 .5rem; }
  ol { list-style: none; padding: 0; margin: 0; }
  li.hit { display: flex; gap: .8rem; align-items: center; background: #fff; border: 1px solid #ddd;
           border-radius: 6px; padding: .4rem .6rem; margin-bottom: .4rem; }
  .rank { width: 1.8rem; text-align: right; color: #888; }
  .badge { font-size: .75rem; font-weight: 700; border-radius: 4px; padding: .15rem .4rem; color: #fff; }
  .badge.image { background: #1565c0; }
  .badge.text { background: #2e7d32; }
  .score { font-variant-numeric: tabular-nums; width: 4.5rem; text-align: right; }
  img.thumb { width: 96px; height: 72px; object-fit: cover; border-radius: 4px; background: #eee; }
  .caption { margin: 0; }
</style>
</head>
<body>
<h1>gapcal: one list for texts and images, ranked by calibrated relevance</h1>
<div id="info">loading...</div>
<form id="text-form">
  <input id="query" name="q" type="search" placeholder="type a query, e.g. a dog on a beach" autocomplete="off">
  <button id="search" type="submit">Search</button>
  <label>or an image: <input id="image" type="file" accept="image/*"></label>
  <label><input id="compare" type="checkbox"> raw vs calibrated side by side</label>
</form>
<div id="status"></div>
<div id="lists">
  <section id="calibrated-column"><h2>calibrated</h2><ol id="calibrated"></ol></section>
  <section id="raw-column"><h2>raw cosine (the modality gap)</h2><ol id="raw"></ol></section>
</div>
<script>
const $ = (id) => document.getElementById(id);
function setStatus(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function render(list, hits) {
  list.replaceChildren();
  for (const hit of hits) {
    const li = document.createElement("li");
    li.className = "hit " + hit.modality;
    li.dataset.id = hit.id;
    const rank = document.createElement("span"); rank.className = "rank"; rank.textContent = hit.rank + ".";
    const badge = document.createElement("span"); badge.className = "badge " + hit.modality;
    badge.textContent = hit.modality;
    const score = document.createElement("span"); score.className = "score"; score.textContent = hit.score.toFixed(3);
    li.append(rank, badge, score);
    if (hit.modality === "image") {
      const img = document.createElement("img"); img.className = "thumb"; img.src = hit.thumbnail;
      img.alt = hit.image || ""; img.title = hit.image || "";
      li.append(img);
    } else {
      const p = document.createElement("p"); p.className = "caption"; p.textContent = hit.text; li.append(p);
    }
    list.append(li);
  }
}
async function run(request, label) {
  setStatus("searching " + label + "...");
  try {
    const response = await fetch("/api/search", request);
    const body = await response.json();
    if (!response.ok) { setStatus(body.error || response.statusText, true); return; }
    render($("calibrated"), body.results);
    render($("raw"), body.raw);
    const images = body.results.filter((h) => h.modality === "image").length;
    setStatus(body.results.length + " results for " + label + " (" + images + " images, " +
              (body.results.length - images) + " texts)");
  } catch (err) { setStatus("request failed: " + err, true); }
}
$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text) { setStatus("type a query first", true); return; }
  run({method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({text, k: 10})},
      '"' + text + '"');
});
$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (!file) return;
  const form = new FormData(); form.append("image", file); form.append("k", "10");
  run({method: "POST", body: form}, "image " + file.name);
});
$("compare").addEventListener("change", () => $("lists").classList.toggle("compare", $("compare").checked));
fetch("/api/info").then((r) => r.json()).then((info) => {
  $("info").textContent = info.items.image + " images and " + info.items.text + " texts, " + info.index +
    " index, model " + info.model;
});
const initial = new URLSearchParams(location.search).get("q");
if (initial) { $("query").value = initial; $("text-form").requestSubmit(); }
</script>
</body>
</html>
"""
