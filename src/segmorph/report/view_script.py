"""CSS and JavaScript of the ``segmorph view`` page (:mod:`segmorph.report.view`), inline in the page.

The script reads the page's JSON blocks: ``view-data`` (mask layers, label names and colours, the cases) and
one ``view-case-N`` per case, whose volumes are gzip-compressed and base64-encoded flat arrays in C order of
``(C, I, J, K)`` (2D images have ``K = 1``). It decompresses a case when it is shown (``DecompressionStream``,
nothing is fetched) and draws each plane on a ``<canvas>``: grey (or RGB) values through the chosen window,
then the masks (fill or outline), then, with two masks, their differences. ``window.segmorphView.ready`` is a
promise that settles when the shown case is drawn.
"""

from __future__ import annotations

VIEW_CSS = """
.view-layout{display:flex;gap:18px;align-items:flex-start}#view-root [hidden]{display:none!important}
.view-cases{max-height:80vh;overflow:auto;min-width:200px;font-size:13px}
.view-cases ol{padding-left:24px;margin:0}.view-cases li{margin:1px 0}
.view-cases button{background:none;border:0;color:#1f4e8c;cursor:pointer;text-align:left;padding:2px 4px;font:inherit}
.view-cases button.current{font-weight:bold;color:#1d2330;background:#e3e8ef;border-radius:3px}
.view-main{min-width:0}
.view-controls{font-size:13px;display:flex;flex-wrap:wrap;gap:6px 20px;align-items:center;margin:4px 0 8px}
.view-controls input[type=range]{width:140px;vertical-align:middle}
.view-planes{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.view-plane{margin:0}.view-plane canvas{image-rendering:pixelated;background:#000;display:block;cursor:crosshair}
.view-plane label{display:block;font-size:12px;text-align:left}.view-plane input[type=range]{width:100%}
.view-hover{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;min-height:1.5em;margin:6px 0}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #777;vertical-align:middle}
.view-tables{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
"""

VIEW_SCRIPT = r"""
(function () {
  'use strict';
  var meta = JSON.parse(document.getElementById('view-data').textContent);
  var root = document.getElementById('view-root');
  var figures = Array.prototype.slice.call(root.querySelectorAll('.view-plane'));
  var canvases = figures.map(function (f) { return f.querySelector('canvas'); });
  var sliders = figures.map(function (f) { return f.querySelector('input[type=range]'); });
  var hoverLine = root.querySelector('.view-hover');
  var windowSelect = root.querySelector('select.view-window');
  var contrast = root.querySelector('input.view-contrast');
  var brightness = root.querySelector('input.view-brightness');
  var differences = root.querySelector('input.view-differences');
  var state = {c: null, slices: [0, 0, 0], shown: [], outline: []};
  var loaded = {};

  function colour(value) {
    var named = meta.colours[String(value)];
    return named || meta.palette[(value - 1) % meta.palette.length];
  }
  function name(value) {
    var named = meta.labels[String(value)];
    if (named !== undefined) return named;
    return value === 0 ? 'background' : 'label_' + value;
  }
  function inflate(text, bytes) {
    var raw = atob(text), packed = new Uint8Array(raw.length);
    for (var n = 0; n < raw.length; n++) packed[n] = raw.charCodeAt(n);
    var stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).arrayBuffer().then(function (buffer) {
      return bytes === 2 ? new Uint16Array(buffer) : new Uint8Array(buffer);
    });
  }
  function load(index) {
    if (!loaded[index]) {
      var c = JSON.parse(document.getElementById('view-case-' + index).textContent);
      var parts = [c.image ? inflate(c.image.data, c.image.bytes) : Promise.resolve(null)].concat(
        c.masks.map(function (m) { return m ? inflate(m.data, m.bytes) : Promise.resolve(null); }));
      loaded = {};
      loaded[index] = Promise.all(parts).then(function (arrays) {
        c.voxels = arrays[0];
        c.labels = arrays.slice(1);
        return c;
      });
    }
    return loaded[index];
  }

  function lookup(c) {
    var w = c.windows[Number(windowSelect.value) || 0];
    var span = Math.max(w.high - w.low, 1e-6);
    var width = span * Math.pow(2, -Number(contrast.value) / 50);
    var centre = (w.high + w.low) / 2 - Number(brightness.value) / 100 * span;
    var low = centre - width / 2;
    var size = c.image ? (c.image.bytes === 2 ? 65536 : 256) : 1;
    var table = new Uint8ClampedArray(size);
    if (c.image) {
      for (var code = 0; code < size; code++) {
        table[code] = (c.image.offset + c.image.scale * code - low) / width * 255;
      }
    }
    return table;
  }

  function isEdge(labels, v, value, a, d, nA, nD, sA, sD) {
    return a === 0 || d === 0 || a === nA - 1 || d === nD - 1 || labels[v - sA] !== value ||
      labels[v + sA] !== value || labels[v - sD] !== value || labels[v + sD] !== value;
  }

  function draw(p, table) {
    var c = state.c, plane = c.planes[p], shape = c.shape;
    var nA = shape[plane.across], nD = shape[plane.down], volume = shape[0] * shape[1] * shape[2];
    var strides = [shape[1] * shape[2], shape[2], 1];
    var sA = strides[plane.across], sD = strides[plane.down];
    var base = state.slices[plane.axis] * strides[plane.axis];
    var canvas = canvases[p];
    canvas.width = nA;
    canvas.height = nD;
    var context = canvas.getContext('2d');
    var picture = context.createImageData(nA, nD), px = picture.data;
    var layers = c.labels.map(function (labels, m) { return state.shown[m] ? labels : null; });
    var pair = differences && differences.checked && c.labels.length === 2 && c.labels[0] && c.labels[1];
    for (var d = 0; d < nD; d++) {
      var row = plane.flip ? nD - 1 - d : d;
      for (var a = 0; a < nA; a++) {
        var v = base + a * sA + row * sD, o = (d * nA + a) * 4, r = 0, g = 0, b = 0;
        if (c.voxels) {
          r = table[c.voxels[v]];
          if (c.channels === 3) {
            g = table[c.voxels[v + volume]];
            b = table[c.voxels[v + 2 * volume]];
          } else { g = r; b = r; }
        }
        for (var m = 0; m < layers.length; m++) {
          var labels = layers[m];
          if (!labels || !labels[v]) continue;
          var value = labels[v];
          var outline = state.outline[m];
          if (outline && !isEdge(labels, v, value, a, row, nA, nD, sA, sD)) continue;
          var rgb = colour(value), alpha = outline ? 1 : meta.fill_alpha;
          r += (rgb[0] - r) * alpha; g += (rgb[1] - g) * alpha; b += (rgb[2] - b) * alpha;
        }
        if (pair) {
          var predicted = c.labels[0][v], reference = c.labels[1][v], mark = null;
          if (reference > 0 && predicted === 0) mark = meta.missed;
          else if (predicted > 0 && predicted !== reference) mark = meta.extra;
          if (mark) {
            r += (mark[0] - r) * 0.8; g += (mark[1] - g) * 0.8; b += (mark[2] - b) * 0.8;
          }
        }
        px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = 255;
      }
    }
    context.putImageData(picture, 0, 0);
  }

  function drawAll() {
    var table = lookup(state.c);
    state.c.planes.forEach(function (_, p) { draw(p, table); });
  }

  function sliceText(c, axis) {
    return String(state.slices[axis] * c.step) + ' (of ' + String(c.original_shape[axis]) + ' slices)';
  }

  function setUp(c) {
    state.c = c;
    state.slices = c.start.slice();
    windowSelect.innerHTML = '';
    c.windows.forEach(function (w, n) {
      var option = document.createElement('option');
      option.value = String(n);
      option.textContent = w.name;
      windowSelect.appendChild(option);
    });
    contrast.value = '0';
    brightness.value = '0';
    root.querySelector('.view-facts').textContent = c.facts;
    figures.forEach(function (figure, p) {
      var plane = c.planes[p];
      figure.hidden = !plane;
      if (!plane) return;
      figure.style.width = plane.size[0] + 'px';
      canvases[p].style.width = plane.size[0] + 'px';
      canvases[p].style.height = plane.size[1] + 'px';
      figure.querySelector('.plane-name').textContent = plane.caption;
      var slider = sliders[p], depth = c.shape[plane.axis];
      slider.parentNode.hidden = depth < 2;
      slider.max = String(depth - 1);
      slider.value = String(state.slices[plane.axis]);
      figure.querySelector('.plane-axis').textContent = plane.axis_name;
      figure.querySelector('.slice-number').textContent = sliceText(c, plane.axis);
    });
    meta.layers.forEach(function (layer, m) {
      var note = root.querySelector('.layer-missing[data-layer="' + m + '"]');
      if (note) note.textContent = c.masks[m] ? '' : '(none for this case)';
    });
    hoverLine.textContent = 'move the pointer over a picture';
  }

  function show(index) {
    var ready = load(index).then(function (c) {
      setUp(c);
      drawAll();
      root.querySelectorAll('.view-cases button').forEach(function (button) {
        button.classList.toggle('current', Number(button.dataset.case) === index);
      });
      return true;
    });
    window.segmorphView.ready = ready;
    return ready;
  }

  function position(c, index) {
    var original = index.slice(0, c.ndim).map(function (i) { return i * c.step; });
    var world = c.affine.slice(0, c.ndim).map(function (row) {
      var sum = row[c.ndim];
      for (var n = 0; n < c.ndim; n++) sum += row[n] * original[n];
      return sum;
    });
    return [original, world];
  }

  function hover(p, event) {
    var c = state.c, plane = c.planes[p], canvas = canvases[p], box = canvas.getBoundingClientRect();
    var a = Math.floor((event.clientX - box.left) / box.width * canvas.width);
    var d = Math.floor((event.clientY - box.top) / box.height * canvas.height);
    if (a < 0 || d < 0 || a >= canvas.width || d >= canvas.height) return;
    var index = [0, 0, 0];
    index[plane.axis] = state.slices[plane.axis];
    index[plane.across] = a;
    index[plane.down] = plane.flip ? canvas.height - 1 - d : d;
    var v = (index[0] * c.shape[1] + index[1]) * c.shape[2] + index[2];
    var found = position(c, index);
    var axes = c.ndim === 3 ? ['I, J, K', 'x, y, z'] : ['I, J', 'x, y'];
    var parts = ['voxel (' + axes[0] + ') = (' + found[0].join(', ') + ')',
                 'position (' + axes[1] + ') = (' + found[1].map(function (x) { return x.toFixed(2); }).join(', ') +
                 ') ' + c.unit];
    if (c.voxels) {
      var volume = c.shape[0] * c.shape[1] * c.shape[2], values = [];
      for (var channel = 0; channel < c.channels; channel++) {
        values.push(c.image.offset + c.image.scale * c.voxels[v + channel * volume]);
      }
      parts.push('value ' + values.map(function (x) { return Number(x.toPrecision(5)); }).join(', '));
    }
    meta.layers.forEach(function (layer, m) {
      var labels = c.labels[m];
      parts.push(layer + ': ' + (labels ? name(labels[v]) + ' (' + labels[v] + ')' : 'no mask'));
    });
    hoverLine.textContent = parts.join(' \u00b7 ');
  }

  window.segmorphView = {ready: null, show: show};
  figures.forEach(function (figure, p) {
    sliders[p].addEventListener('input', function () {
      var c = state.c, plane = c.planes[p];
      state.slices[plane.axis] = Number(sliders[p].value);
      figure.querySelector('.slice-number').textContent = sliceText(c, plane.axis);
      draw(p, lookup(c));
    });
    canvases[p].addEventListener('mousemove', function (event) { hover(p, event); });
  });
  [windowSelect, contrast, brightness, differences].forEach(function (control) {
    if (control) control.addEventListener(control.type === 'range' ? 'input' : 'change', drawAll);
  });
  meta.layers.forEach(function (layer, m) {
    var shown = root.querySelector('input.layer-shown[data-layer="' + m + '"]');
    var outline = root.querySelector('input.layer-outline[data-layer="' + m + '"]');
    state.shown[m] = shown.checked;
    state.outline[m] = outline.checked;
    shown.addEventListener('change', function () { state.shown[m] = shown.checked; drawAll(); });
    outline.addEventListener('change', function () { state.outline[m] = outline.checked; drawAll(); });
  });
  root.querySelectorAll('.view-cases button').forEach(function (button) {
    button.addEventListener('click', function () { show(Number(button.dataset.case)); });
  });
  show(0);
})();
"""
