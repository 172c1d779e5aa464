;; The WebAssembly "hello" workload, served by wasm-host.py (the host does the networking).
;;
;; ABI (one call per request):
;;   - the host writes the HTTP request line ("GET /path HTTP/1.0") into `memory` at offset 0
;;     (at most 1024 bytes) and calls handle(len);
;;   - handle writes the response body at offset 2048 and returns its length.
;; The body is "hello from wasm #N: <request line>\n", N counting this instance's requests, so a
;; test can tell that the bytes were produced by the module, per request, with state kept inside it.
(module
  (memory (export "memory") 1)
  (global $served (mut i32) (i32.const 0))
  (data (i32.const 1024) "hello from wasm #")

  ;; Writes $n in decimal at $at; returns the number of digits.
  (func $decimal (param $n i32) (param $at i32) (result i32)
    (local $digits i32) (local $rest i32) (local $i i32)
    (local.set $digits (i32.const 1))
    (local.set $rest (i32.div_u (local.get $n) (i32.const 10)))
    (block $done
      (loop $count
        (br_if $done (i32.eqz (local.get $rest)))
        (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
        (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
        (br $count)))
    (local.set $i (local.get $digits))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $at) (local.get $i))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $write (local.get $i)))
    (local.get $digits))

  (func (export "handle") (param $len i32) (result i32)
    (local $at i32)
    (if (i32.gt_u (local.get $len) (i32.const 1024)) (then (local.set $len (i32.const 1024))))
    (global.set $served (i32.add (global.get $served) (i32.const 1)))
    ;; "hello from wasm #" (17 bytes), then N, ": ", the request line, "\n".
    (memory.copy (i32.const 2048) (i32.const 1024) (i32.const 17))
    (local.set $at (i32.add (i32.const 2065) (call $decimal (global.get $served) (i32.const 2065))))
    (i32.store16 (local.get $at) (i32.const 0x203a))  ;; ": " little-endian
    (local.set $at (i32.add (local.get $at) (i32.const 2)))
    (memory.copy (local.get $at) (i32.const 0) (local.get $len))
    (local.set $at (i32.add (local.get $at) (local.get $len)))
    (i32.store8 (local.get $at) (i32.const 10))
    (i32.sub (i32.add (local.get $at) (i32.const 1)) (i32.const 2048))))
