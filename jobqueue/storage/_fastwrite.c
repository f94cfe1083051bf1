/*
 * jobqueue.storage._fastwrite: one durable file write in one release of the
 * interpreter lock (see jobqueue/storage/jobwriter.py, which has a pure-Python
 * twin of every call here and uses this module only when it was built).
 *
 * write_file(dir_fd, name, target, data, file_mode, exchange, create, sync_dir)
 *   Opens `name` in the directory `dir_fd` (creating it exclusively with
 *   `file_mode` if `create`), writes `data` from offset 0 and cuts the file
 *   to its length, fsyncs and closes it, then either exchanges `name` and
 *   `target` atomically (renameat2 RENAME_EXCHANGE, if `exchange`) or renames
 *   `name` over `target`; then fsyncs the directory if `sync_dir`.
 *   Returns None when every step succeeded, else (step, errno) for the first
 *   step that failed: "open", "write", "fsync", "rename" or "fsync_dir".
 *   Nothing after a failed step is done; the caller decides how to undo.
 *
 * exchange(dir_fd, name_a, name_b)
 *   Exchanges two names of one directory atomically; raises OSError.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static int
exchange_names(int dir_fd, const char *name_a, const char *name_b)
{
#ifdef SYS_renameat2
    return (int)syscall(SYS_renameat2, dir_fd, name_a, dir_fd, name_b, RENAME_EXCHANGE);
#else
    errno = ENOSYS;
    return -1;
#endif
}

enum step { STEP_OK, STEP_OPEN, STEP_WRITE, STEP_FSYNC, STEP_RENAME, STEP_FSYNC_DIR };
static const char *const step_names[] = {"", "open", "write", "fsync", "rename", "fsync_dir"};

struct request {
    int dir_fd;
    const char *name;
    const char *target;
    const char *data;
    size_t size;
    int file_mode;
    int exchange;
    int create;
    int sync_dir;
};

/* The whole write; runs without the interpreter lock. Sets *error on failure. */
static enum step
write_file_unlocked(const struct request *req, int *error)
{
    int flags = O_WRONLY | O_CLOEXEC | (req->create ? O_CREAT | O_EXCL : 0);
    int fd = openat(req->dir_fd, req->name, flags, req->file_mode);
    if (fd < 0) {
        *error = errno;
        return STEP_OPEN;
    }
    size_t done = 0;
    while (done < req->size) {
        ssize_t written = pwrite(fd, req->data + done, req->size - done, (off_t)done);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            *error = errno;
            close(fd);
            return STEP_WRITE;
        }
        done += (size_t)written;
    }
    if (!req->create && ftruncate(fd, (off_t)req->size) < 0) {
        *error = errno;
        close(fd);
        return STEP_WRITE;
    }
    if (fsync(fd) < 0) {
        *error = errno;
        close(fd);
        return STEP_FSYNC;
    }
    if (close(fd) < 0 && errno != EINTR) {
        *error = errno;
        return STEP_WRITE;
    }
    int moved = req->exchange ? exchange_names(req->dir_fd, req->name, req->target)
                              : renameat(req->dir_fd, req->name, req->dir_fd, req->target);
    if (moved < 0) {
        *error = errno;
        return STEP_RENAME;
    }
    if (req->sync_dir && fsync(req->dir_fd) < 0) {
        *error = errno;
        return STEP_FSYNC_DIR;
    }
    return STEP_OK;
}

static PyObject *
fastwrite_write_file(PyObject *self, PyObject *args)
{
    struct request req;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "issy*ippp", &req.dir_fd, &req.name, &req.target, &data,
                          &req.file_mode, &req.exchange, &req.create, &req.sync_dir))
        return NULL;
    req.data = data.buf;
    req.size = (size_t)data.len;
    int error = 0;
    enum step failed;
    Py_BEGIN_ALLOW_THREADS
    failed = write_file_unlocked(&req, &error);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (failed == STEP_OK)
        Py_RETURN_NONE;
    return Py_BuildValue("(si)", step_names[failed], error);
}

static PyObject *
fastwrite_exchange(PyObject *self, PyObject *args)
{
    int dir_fd, result;
    const char *name_a, *name_b;
    if (!PyArg_ParseTuple(args, "iss", &dir_fd, &name_a, &name_b))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    result = exchange_names(dir_fd, name_a, name_b);
    Py_END_ALLOW_THREADS
    if (result < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef fastwrite_methods[] = {
    {"write_file", fastwrite_write_file, METH_VARARGS,
     "write_file(dir_fd, name, target, data, file_mode, exchange, create, sync_dir)\n"
     "--\n\nOne durable write; None, or (failed step, errno)."},
    {"exchange", fastwrite_exchange, METH_VARARGS,
     "exchange(dir_fd, name_a, name_b)\n--\n\nExchange two names atomically; OSError."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastwrite_module = {
    PyModuleDef_HEAD_INIT, "_fastwrite",
    "Durable file writes in one release of the interpreter lock.", -1, fastwrite_methods,
};

PyMODINIT_FUNC
PyInit__fastwrite(void)
{
    return PyModule_Create(&fastwrite_module);
}
