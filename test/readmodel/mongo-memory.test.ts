/**
 * The memory store as the stand-in for MongoDB: REC templates (the classic
 * cases on REC versions of their templates, and nested shapes) behave there
 * as on MongoDB, so the demo and users' tests need no server.
 */
import * as Memory from "../../src/readmodel/memory.ts"
import { readModelConformance } from "./conformance.ts"

readModelConformance("memory", () => Memory.layer, { backends: ["rec"] })
